import subprocess
import sys

import pytest

from sthfast import optional_deps
from sthfast.cli import main


def test_info_reports_backends_and_backbone(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for piece in optional_deps.OPTIONAL:
        assert piece in out
    from sthfast.backends import extension

    assert f"pool_patch             cpu: {'cpp' if extension.available() else 'reference'}" in out
    assert "knn_hypergraph         cpu: sparse" in out
    assert "minilm (all-MiniLM-L6-v2) at" in out


def test_info_says_what_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(optional_deps, "probe", lambda name: optional_deps.Found(name, False, f"{name} missing here"))
    main(["info"])
    out = capsys.readouterr().out
    assert "triton                 no   triton missing here" in out


def test_info_rejects_bad_node_count(capsys):
    with pytest.raises(SystemExit):
        main(["info", "--model", "--num-nodes", "0"])
    assert "--num-nodes must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_with_model_counts():
    out = subprocess.run([sys.executable, "-m", "sthfast.cli", "info", "--model", "--num-nodes", "50"],
                         capture_output=True, text=True, check=True).stdout
    assert "default model at N=50" in out and "lora" in out


@pytest.mark.slow
def test_profile_writes_the_table_chart_and_json(tmp_path, capsys):
    import json

    chart, out = tmp_path / "profile.png", tmp_path / "profile.json"
    assert main(["profile", "--tiny", "--repeats", "1", "--batch", "2", "--chart", str(chart),
                 "--json", str(out)]) == 0
    assert "sum of stages" in capsys.readouterr().out and chart.stat().st_size > 10_000
    record = json.loads(out.read_text())
    assert record["meta"]["command"].startswith("sthfast profile --tiny")
    assert "training batch" in record["results"]


def test_profile_rejects_bad_sizes(capsys):
    assert main(["profile", "--repeats", "0"]) == 2
    assert "--repeats must be >= 1, got 0" in capsys.readouterr().err


def test_profile_refuses_unwritable_outputs_and_oversized_batches(tmp_path, capsys):
    assert main(["profile", "--chart", str(tmp_path / "missing" / "chart.png")]) == 2
    assert "its folder does not exist" in capsys.readouterr().err
    assert main(["profile", "--batch", "100000"]) == 2
    assert "training windows of LOS-LOOP" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["profile", "--help"]])
def test_help_imports_neither_torch_nor_the_training_loop(argv):
    """The parser is built from torch-free modules: help is quick (about 0.2 s, not 4 s)."""
    code = (f"import sys\nfrom sthfast.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'transformers', 'sthfast.training', 'sthfast.model') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--" in out and out.strip().endswith("[]"), out[-300:]
