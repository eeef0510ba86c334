"""The `asympo` command's own checks (no stack needed): help, bad specs, missing logs and tokens."""

from typer.testing import CliRunner

from asympo.cli.app import app

runner = CliRunner()


def test_help_lists_the_commands():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for command in (
        "up",
        "down",
        "status",
        "submit",
        "jobs",
        "logs",
        "demo",
        "bench",
        "watch",
        "report",
        "models",
        "compare",
    ):
        assert command in out.output


def test_submit_refuses_an_invalid_spec_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm:\n  lr: -1\n  stepz: 3\n")
    out = runner.invoke(app, ["--home", str(tmp_path), "submit", str(bad)])
    assert out.exit_code == 2
    assert "algorithm.lr" in out.output and "algorithm.stepz" in out.output


def test_submit_without_a_token_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.delenv("ASYMPO_API_TOKEN", raising=False)
    job = tmp_path / "job.yaml"
    job.write_text("algorithm:\n  steps: 3\n")
    out = runner.invoke(app, ["--home", str(tmp_path), "submit", str(job)])
    assert out.exit_code == 1 and "asympo up" in out.output


def test_logs_of_an_unknown_service(tmp_path):
    out = runner.invoke(app, ["--home", str(tmp_path), "logs", "nope"])
    assert out.exit_code == 1 and "no log" in out.output


def test_unknown_benchmark(tmp_path):
    out = runner.invoke(app, ["bench", "nope"])
    assert out.exit_code == 2 and "learner" in out.output


def test_status_of_a_stack_that_never_ran(tmp_path):
    out = runner.invoke(app, ["--home", str(tmp_path), "status", "--json"])
    assert out.exit_code == 0 and '"processes": {}' in out.output


def test_cpus_option_parses_lists_and_ranges_and_names_bad_items():
    import pytest

    from asympo.cli.cpu_pinning import parse_cpus

    assert parse_cpus(["rollout=0", "learner=1,3-4"]) == {"rollout": {0}, "learner": {1, 3, 4}}
    for bad in ("pods=0", "learner=", "learner=a", "learner"):
        with pytest.raises(ValueError, match="--cpus"):
            parse_cpus([bad])


def test_compare_without_a_stack_says_to_start_one(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("algorithm:\n  steps: 3\n")
    url = "http://127.0.0.1:9"  # the discard port: nothing answers HTTP there
    out = runner.invoke(app, ["--home", str(tmp_path), "--url", url, "--token", "t", "compare", str(job),
                              "--loss", "asympo,naive", "--out", str(tmp_path / "cmp")])  # fmt: skip
    assert out.exit_code == 2, out.output
    assert "no asympo gateway answers at http://127.0.0.1:9" in out.output and "asympo up" in out.output
    assert not (tmp_path / "cmp").exists()


def test_compare_names_a_bad_loss_before_running_anything(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("algorithm:\n  steps: 3\n")
    out = runner.invoke(app, ["--home", str(tmp_path), "compare", str(job), "--loss", "asympo,reinforce"])
    assert out.exit_code == 2 and "algorithm.loss" in out.output, out.output
