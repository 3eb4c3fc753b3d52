#!/usr/bin/env bash
# Print the path of a Python 3.12 interpreter (the Lambda runtime's version), or fail.
set -euo pipefail
if command -v pyenv >/dev/null 2>&1; then
  version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V | tail -n 1 || true)
  if [ -n "${version}" ]; then
    PYENV_VERSION="${version}" pyenv which python
    exit 0
  fi
fi
for candidate in python3.12 python3; do
  if command -v "${candidate}" >/dev/null 2>&1 &&
     "${candidate}" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' 2>/dev/null; then
    command -v "${candidate}"
    exit 0
  fi
done
echo "cryopilot needs Python 3.12 (the Lambda runtime): install it (e.g. pyenv install 3.12) and retry" >&2
exit 1
