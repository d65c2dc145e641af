#!/usr/bin/env bash
# Creates bench/.venv-recbole: RecBole 1.2.1 (+ DGL 2.1.0 for its KGAT) beside torch 2.13 on CPU.
# RecBole is a PEER we compare against, never a dependency of multikg4rec: it lives only in this venv.
# Re-runnable: every step checks what is already there and says what it did.
#
#   bash bench/recbole/setup.sh            # create / repair the venv
#   VENV=/some/where bash bench/recbole/setup.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$(realpath -m "${VENV:-$HERE/../.venv-recbole}")"
PY="${PYTHON:-python3.11}"

say() { printf '[setup-recbole] %s\n' "$*"; }

if [[ -x "$VENV/bin/python" ]]; then
    say "venv exists: $VENV"
else
    say "creating venv: $VENV ($PY)"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check)

have() {  # have PKG VERSION -> 0 if PKG==VERSION is installed in the venv
    local v
    v="$("$VPY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true)"
    [[ "$v" == "$2"* ]]
}

# 1. torch FIRST and alone: the exact pin takes the local CPU wheel; a looser spec pulls a multi-GB CUDA build.
if have torch 2.13.0; then say "torch 2.13.0 already installed"; else
    say "installing torch==2.13.0 (CPU wheel)"; "${PIP[@]}" "torch==2.13.0"; fi

# 2. RecBole and the pins known to make it run beside torch 2.13:
#    numpy<2 (DGL 2.1.0's binaries are built against the numpy 1 ABI), scipy 1.11.4 (a known-good pin from
#    numpy-1 days, so a later scipy cannot pull numpy 2 in), pandas<3 (pandas 3's copy-on-write
#    silently turns RecBole's `feat[field].fillna(..., inplace=True)` into a no-op). torch==2.13.0 is
#    repeated so the resolver keeps the installed CPU wheel instead of fetching another torch.
if have recbole 1.2.1 && "$VPY" -c "
import numpy, pandas, sys
sys.exit(int(int(numpy.__version__.split('.')[0]) >= 2 or int(pandas.__version__.split('.')[0]) >= 3))" 2>/dev/null; then
    say "recbole 1.2.1 + numpy<2 + pandas<3 already installed"
else
    say "installing recbole==1.2.1 numpy<2 scipy==1.11.4 pandas<3"
    "${PIP[@]}" "torch==2.13.0" "recbole==1.2.1" "numpy<2" "scipy==1.11.4" "pandas<3"
fi

# 3. DGL for RecBole's KGAT. dgl 2.1.0's metadata pulls its own torch-era deps, so --no-deps, then what it
#    really imports (torchdata<0.8: 0.8 dropped the datapipes DGL 2.1 imports; pydantic for graphbolt's
#    config classes).
if have dgl 2.1.0; then say "dgl 2.1.0 already installed"; else
    say "installing dgl==2.1.0 --no-deps"; "${PIP[@]}" --no-deps "dgl==2.1.0"; fi
if "$VPY" -c "
import importlib.metadata as m, sys
sys.exit(int(not m.version('torchdata').startswith('0.7') or not m.version('pydantic')))" 2>/dev/null; then
    say "DGL's runtime deps (torchdata 0.7, pydantic) already installed"
else
    say "installing DGL's runtime deps: torchdata<0.8 pydantic psutil requests tqdm networkx (keeping torch 2.13.0)"
    "${PIP[@]}" "torch==2.13.0" "numpy<2" "pandas<3" "torchdata<0.8" pydantic psutil requests tqdm networkx
fi

# 3b. setuptools<70 LAST: ray (a RecBole dependency) does `import pkg_resources`, which recent setuptools no
#    longer ships. torch 2.13's metadata asks for setuptools>=77 (used only to build C++ extensions, never
#    here), so the two cannot be in ONE resolver call, and any later pip call that names torch would
#    upgrade setuptools again: install it alone, after everything else; pip warns about torch's
#    requirement, harmlessly.
if "$VPY" -c "import pkg_resources" 2>/dev/null; then
    say "pkg_resources importable (setuptools $("$VPY" -c 'import setuptools; print(setuptools.__version__)'))"
else
    say "installing setuptools<70 alone (pip will warn that torch asks for >=77: harmless on CPU)"
    "${PIP[@]}" "setuptools<70" || true
    "$VPY" -c "import pkg_resources" || { say "FAILED: pkg_resources still missing"; exit 1; }
fi

# 4. DGL 2 renamed two APIs that RecBole 1.2.1's KGAT still calls: patch the installed file (idempotent).
KGAT="$("$VPY" - <<'EOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("recbole")
print(pathlib.Path(spec.origin).parent / "model/knowledge_aware_recommender/kgat.py")
EOF
)"
if grep -q "preserve_nodes=True" "$KGAT"; then
    sed -i 's/preserve_nodes=True/relabel_nodes=False/g' "$KGAT"
    say "patched $KGAT: preserve_nodes=True -> relabel_nodes=False"
else say "kgat.py already uses relabel_nodes=False"; fi
if grep -q "\.adjacency_matrix(" "$KGAT"; then
    sed -i 's/\.adjacency_matrix(/.adj_external(/g' "$KGAT"
    say "patched $KGAT: adjacency_matrix( -> adj_external("
else say "kgat.py already uses adj_external("; fi

# 5. DGL's graphbolt: dgl 2.1.0 ships libgraphbolt_pytorch_<torch version>.so only for torch <= 2.2, and
#    `import dgl` raises FileNotFoundError for torch 2.13. We do NOT patch site-packages for this:
#    run_recbole.py installs an import hook that skips graphbolt (RecBole's KGAT never uses it).

# 6. smoke check (with the same runtime settings as run_recbole.py)
say "smoke check"
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 DGLBACKEND=pytorch "$VPY" - <<EOF
import sys; sys.path.insert(0, "$HERE")
import run_recbole  # installs the graphbolt skip + compat shims
import torch, numpy, scipy, recbole, dgl
from recbole.model.knowledge_aware_recommender.kgat import KGAT
print("[setup-recbole] ok: torch", torch.__version__, "numpy", numpy.__version__, "scipy", scipy.__version__,
      "recbole", recbole.__version__, "dgl", dgl.__version__)
EOF
say "done: $VENV"
