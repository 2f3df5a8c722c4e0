"""Built-in techniques: name → ``module:Class``. Adding a technique is one file here plus one line below."""

BUILTIN: dict[str, str] = {
    "step_reduction": "techniques.step_reduction:StepReduction",
    "dual_output": "techniques.dual_output:DualOutput",
    "ode_unet": "techniques.ode_unet:ODEUNet",
    "distillation": "techniques.distillation:Distillation",
    "truncation": "techniques.truncation:Truncation",
    "guidance_distillation": "techniques.guidance_distillation:GuidanceDistillation",
    "feature_cache": "techniques.feature_cache:FeatureCache",
    "quantization": "techniques.quantization:Quantization",
    "quanto": "techniques.quanto:Quanto",
    "deepcache": "techniques.deepcache:DeepCache",
    "token_merging": "techniques.token_merging:TokenMerging",
    "cache_dit": "techniques.cache_dit:CacheDiT",
}

# Until versions were declared integers, a record carried a hash of its technique's source file. A record with the
# hash of the source that became version 1 is a version-1 record; any other hash is older, and stale.
LEGACY_SOURCE_HASHES: dict[str, dict[str, int]] = {
    "step_reduction": {"7a42d30f579f": 1},
    "dual_output": {"a1463323e828": 1},
    "ode_unet": {"e860ea46a1bb": 1},
    "distillation": {"84d91e60f904": 1},
    "truncation": {"0438abf00375": 1},
    "guidance_distillation": {"9d816675f400": 1},
    "feature_cache": {"ccda30af54ce": 1},
    "quantization": {"1f031ee9b989": 1},
    "quanto": {"2a0cde48d75a": 1},
    "deepcache": {"b69ef910c0b7": 1},
    "token_merging": {"9cb4bca458d2": 1},
    "cache_dit": {"584f1ff8ac22": 1},
}
