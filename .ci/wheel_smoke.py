"""Smoke test of an installed (not editable) udfc-hub wheel: run from outside the source tree.

It imports the installed package (and refuses to run against the source tree), compresses a tiny randomly
initialised model, saves it (which renders the card from the packaged template), reloads it through timm's
`local-dir:` and requires identical logits, and runs the console script.
"""

import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import timm
import torch

import udfc_hub

site = Path(sysconfig.get_paths()["purelib"]).resolve()
where = Path(udfc_hub.__file__).resolve()
if site not in where.parents:
    sys.exit(f"udfc_hub was imported from {where}, not from the installed wheel in {site}")
torch.manual_seed(0)
model = timm.create_model("cifar_resnet20").eval()
result = udfc_hub.compress(model, prune_ratio=0.3, bits=4)
folder = Path(tempfile.mkdtemp()) / "r20-udfc"
udfc_hub.save_pretrained(result, folder)
assert "udfc_hub" in (folder / "README.md").read_text()
loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
x = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    assert torch.equal(loaded(x), result.model(x)), "the reloaded model differs"
script = shutil.which("udfc-hub")
version = subprocess.run([script, "--version"], capture_output=True, text=True, check=True).stdout.strip()
assert version == f"udfc-hub {udfc_hub.__version__}", version
print(f"wheel smoke test passed: {where.parent} ({version}), {folder} reloads with identical logits")
