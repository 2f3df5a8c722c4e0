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
