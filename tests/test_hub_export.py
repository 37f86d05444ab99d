"""The saved folder is a self-contained Hub model: it loads with trust_remote_code where hf_mdlm is not installed."""

import json

import pytest
import torch
from safetensors.torch import save_file

from hf_mdlm import MDLMForMaskedLM
from conftest import tiny_config
from hub_cache import install_in_hf_cache, last_json_line, run_without_hf_mdlm


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    model = MDLMForMaskedLM(tiny_config()).eval()
    out = tmp_path / "model"
    model.save_pretrained(out)
    return model, out


def test_saved_folder_contents(saved_model):
    _, folder = saved_model
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_mdlm.py", "modeling_mdlm.py",
            "generation_mdlm.py"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_mdlm.MDLMConfig",
        "AutoModel": "modeling_mdlm.MDLMForMaskedLM",
        "AutoModelForMaskedLM": "modeling_mdlm.MDLMForMaskedLM",
    }


def test_hub_files_import_nothing_but_torch_transformers_and_siblings():
    from pathlib import Path
    import re

    package = Path(__file__).parent.parent / "hf_mdlm"
    for name in ("configuration_mdlm.py", "modeling_mdlm.py", "generation_mdlm.py"):
        for line in (package / name).read_text().splitlines():
            match = re.match(r"\s*(?:from|import)\s+([\w.]+)", line)
            if match:
                root = match.group(1).split(".")[0]
                assert root in {"", "torch", "transformers", "math", "dataclasses", "typing", "warnings",
                                "copy", "collections", "inspect", "tqdm", "__future__"}, f"{name}: {line}"


def test_loads_with_trust_remote_code_without_hf_mdlm(saved_model, tmp_path):
    """In a process that cannot import hf_mdlm: load by path and by repo id from an offline HF cache."""
    model, folder = saved_model
    ids = torch.randint(0, 90, (2, 7))
    with torch.no_grad():
        expected = model(ids).logits
    save_file({"ids": ids}, str(tmp_path / "ids.safetensors"))
    hf_home = tmp_path / "hf_home"
    install_in_hf_cache(folder, "org/name", hf_home)
    code = f"""
        import json, torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel, AutoModelForMaskedLM
        try:
            import hf_mdlm
            raise SystemExit("hf_mdlm should not be importable here")
        except ImportError:
            pass
        ids = load_file({str(tmp_path / 'ids.safetensors')!r})["ids"]
        by_path = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        by_repo = AutoModelForMaskedLM.from_pretrained("org/name", trust_remote_code=True).eval()
        with torch.no_grad():
            save_file({{"path": by_path(ids).logits, "repo": by_repo(ids).logits}}, "logits.safetensors")
        print(json.dumps({{"cls": type(by_repo).__name__, "module": type(by_path).__module__,
                           "has_generate": hasattr(by_path, "generate")}}))
    """
    info = last_json_line(run_without_hf_mdlm(code, cwd=tmp_path, env={"HF_HOME": str(hf_home)}))
    assert info["cls"] == "MDLMForMaskedLM" and info["has_generate"]
    assert not info["module"].startswith("hf_mdlm")
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "logits.safetensors"))
    torch.testing.assert_close(got["path"], expected, rtol=0, atol=0)
    torch.testing.assert_close(got["repo"], expected, rtol=0, atol=0)
