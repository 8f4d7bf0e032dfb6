"""Where converted model copies go: a documented cache, not the working directory."""

from pathlib import Path

from adaptrec_prompts.backends.gemma import gemma_270m_dir, model_cache


def test_the_cache_follows_adaptrec_cache_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("ADAPTREC_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache() == tmp_path / "home" / ".cache" / "adaptrec" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache() == tmp_path / "xdg" / "adaptrec" / "models"
    monkeypatch.setenv("ADAPTREC_CACHE", str(tmp_path / "mine"))
    assert model_cache() == tmp_path / "mine" / "models"
    monkeypatch.chdir(tmp_path)
    assert not Path(model_cache()).is_relative_to(Path.cwd() / "artifacts")


def test_an_existing_copy_is_used_from_the_cache_without_converting(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ADAPTREC_CACHE", str(tmp_path))
    copy = tmp_path / "models" / "gemma-3-270m"
    copy.mkdir(parents=True)
    (copy / "config.json").write_text('{"model_type": "gemma3_text", "quantization_config": {"quant_method": "gguf"}}')
    (copy / "model.safetensors").write_bytes(b"")
    assert gemma_270m_dir() == copy
    assert "quantization_config" not in (copy / "config.json").read_text()  # older copies are fixed on the way
    assert "one-time conversion" not in capsys.readouterr().err
