"""`cings compare`: a chart draws only metrics every file has; files keep their figures as written."""

import json

from cings.cli import main


def metrics_file(tmp_path, name, **figures):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"n": 4, "n_without_answers": 0, **figures}))
    return path


def test_an_unknown_metric_is_refused_with_a_suggestion(tmp_path, capsys):
    a = metrics_file(tmp_path, "a", acc=50.0, acc_ci=[10.0, 90.0], em=25.0, f1=30.0)
    b = metrics_file(tmp_path, "b", acc=75.0, em=50.0, f1=60.0)
    out = tmp_path / "r.md"
    assert main(["compare", str(a), str(b), "--output", str(out), "--metrics", "accuracy"]) == 1
    err = capsys.readouterr().err
    assert "no metric 'accuracy' in the metrics files; did you mean 'acc'?" in err
    assert "(in every file: acc, em, f1)" in err and "Traceback" not in err
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_a_metric_some_file_lacks_is_refused_naming_that_file(tmp_path, capsys):
    a = metrics_file(tmp_path, "a", acc=50.0, rouge_l=40.0, neither_rate=10.0)
    b = metrics_file(tmp_path, "b", acc=75.0, neither_rate=5.0)
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "r.md"), "--metrics", "acc,rouge_l"]) == 1
    assert "no metric 'rouge_l' in b" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "r.md"), "--metrics", "acc,neither_rate"]) == 0
