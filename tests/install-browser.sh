#!/usr/bin/env bash
# Install Debian's Chromium and ChromeDriver for the report's browser test, when they are missing and we may
# (root, or passwordless sudo). Never fails: without them the browser test is skipped and says why.
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "install-browser: not root and no passwordless sudo; the Chromium report test will be skipped"; exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "install-browser: no apt-get here; install Chromium + ChromeDriver yourself to run the browser test"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
($SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null) \
  || echo "install-browser: apt-get failed; the Chromium report test will be skipped"
exit 0
