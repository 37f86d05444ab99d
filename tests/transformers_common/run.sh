#!/usr/bin/env bash
# transformers' common model tests (tests/test_modeling_common.py of the installed release) on hf_mdlm's classes.
# Needs the package registry (pip download of the transformers sdist, ~11 MB); nothing is written to the checkout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(python -c 'import transformers; print(transformers.__version__)')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip download --quiet --no-deps --no-binary :all: "transformers==$version" -d "$work"
tar xzf "$work"/transformers-"$version".tar.gz -C "$work" "transformers-$version/tests"
tests="$work/transformers-$version/tests"
# The two mixins test_modeling_common.py imports from sub-folders the sdist leaves out (export and autoregressive
# generation tests, which do not apply to a diffusion LM) become empty classes.
mkdir -p "$tests/exporters" "$tests/generation"
touch "$tests/__init__.py" "$tests/exporters/__init__.py" "$tests/generation/__init__.py"
echo "class ExportTesterMixin: pass" > "$tests/exporters/test_export.py"
echo "class GenerationTesterMixin: pass" > "$tests/generation/test_utils.py"
cp "$here/mdlm_common_tests.py" "$tests/test_mdlm_common.py"
python -m pip install --quiet parameterized
cd "$work/transformers-$version"
python -m pytest -p no:cacheprovider -q -rs tests/test_mdlm_common.py "$@"
