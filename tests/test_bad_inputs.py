"""Nothing lost, nothing cryptic: a table of bad inputs, each run as a real ``jaxmoe``
subprocess (``python -m jaxmoe.cli ...``).

Every case must exit non-zero (or 0 where that is the documented answer: resuming a finished
run, falling back past a damaged checkpoint) with exactly one line on stderr that contains
the expected words and no traceback, and must leave every file that existed before it
byte-identical (and create nothing). One tiny trained run (4 steps, checkpoints 2 and 4)
is shared by all cases; the cases run two at a time.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LM = str(REPO / "configs" / "lm_tiny.yaml")
TS = str(REPO / "configs" / "time_moe_tiny.yaml")
TINY = ["model.embed_dim=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.moe.num_experts=4", "model.moe.expert_ffn_dim=16", "model.moe.first_k_dense=0",
        "model.moe.num_shared_experts=0", "data.seq_len=32", "data.eval_fraction=0", "train.batch_size=4",
        "train.log_every=1", "train.warmup_steps=2", "train.steps=4", "train.checkpoint_every=2",
        "train.progress=false"]


def jaxmoe(env, args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxmoe.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncate_params(step_dir: Path) -> None:
    """Cut the array file holding the output projection's params in the middle of its bytes
    (orbax spreads the arrays over its files in no fixed order; a file holding only optimizer
    state is not read by ``generate``)."""
    from jaxmoe.checkpoint import ocdbt_entries

    f, offset, length = next((f, o, n) for key, f, o, n in ocdbt_entries(step_dir / "state")
                             if key.startswith("params.lm_head.kernel/0"))
    f.write_bytes(f.read_bytes()[: offset + length // 2])


def make_inputs(root: Path, env) -> dict[str, Path]:
    """The shared run, damaged copies of it and the input files the cases point at."""
    from jaxmoe.config import dump_config, load_config

    run = root / "run"
    r = jaxmoe(env, ["train", "--config", LM, *TINY, f"train.output_dir={run}"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    d = {"run": run}
    d["damaged"] = root / "damaged"  # newest checkpoint truncated, checkpoint 2 intact
    shutil.copytree(run, d["damaged"])
    _truncate_params(d["damaged"] / "checkpoints" / "4")
    d["all_damaged"] = root / "all_damaged"
    shutil.copytree(run, d["all_damaged"])
    for step in (2, 4):
        _truncate(d["all_damaged"] / "checkpoints" / str(step) / "state" / "_METADATA")
    d["binrun"] = root / "binrun"  # a run directory whose config.yaml is binary
    (d["binrun"] / "checkpoints").mkdir(parents=True)
    (d["binrun"] / "config.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff" * 8)
    d["tsrun"] = root / "tsrun"  # a time-series run directory (config only)
    (d["tsrun"] / "checkpoints").mkdir(parents=True)
    (d["tsrun"] / "config.yaml").write_text(dump_config(load_config(TS)))
    d["emptyrun"] = root / "emptyrun"
    (d["emptyrun"] / "checkpoints").mkdir(parents=True)
    (d["emptyrun"] / "config.yaml").write_text((run / "config.yaml").read_text())
    d["userdir"] = root / "userdir"  # someone's results: not a jaxmoe run
    d["userdir"].mkdir()
    (d["userdir"] / "summary.json").write_text('{"mine": true}\n')
    (d["userdir"] / "metrics.jsonl").write_text('{"step": 1}\n')
    d["emptydir"] = root / "emptydir"
    d["emptydir"].mkdir()
    d["bin"] = root / "binary.dat"
    d["bin"].write_bytes(bytes(range(256)) * 4)
    d["bintxt"] = root / "binary.txt"
    d["bintxt"].write_bytes(bytes(range(256)) * 4)
    d["nul"] = root / "nul.yaml"
    d["nul"].write_text("model:\n  embed_dim: 32\x00\n")
    d["list"] = root / "list.yaml"
    d["list"].write_text("- a\n- b\n")
    d["badyaml"] = root / "bad.yaml"
    d["badyaml"].write_text("train: [1, 2\n")
    d["empty"] = root / "empty.txt"
    d["empty"].write_text(" \n\n")
    d["notjson"] = root / "tok.json"
    d["notjson"].write_text("hello, not json\n")
    d["jsonnotok"] = root / "other.json"
    d["jsonnotok"].write_text('{"vocab": []}\n')
    d["prompts"] = root / "prompts.txt"
    d["prompts"].write_text("def f(x):\nimport os\n")
    d["ref"] = root / "ref.jsonl"
    d["ref"].write_text('{"prompt": "1+1=", "answer": "2"}\n')
    d["noanswer"] = root / "noanswer.jsonl"
    d["noanswer"].write_text('{"prompt": "1+1="}\n')
    d["broken"] = root / "broken.jsonl"
    d["broken"].write_text('{"prompt": "a", "answer": "b"}\n{"prompt": oops}\n')
    d["csv"] = root / "series.csv"
    d["csv"].write_text("value\n" + "".join(f"{i % 7}.5\n" for i in range(64)))
    d["hfbin"] = root / "hfbin"  # a "Hugging Face directory" whose config.json is binary
    d["hfbin"].mkdir()
    (d["hfbin"] / "config.json").write_bytes(bytes(range(256)))
    d["hflist"] = root / "hflist"  # ... or JSON but no object
    d["hflist"].mkdir()
    (d["hflist"] / "config.json").write_text("[1, 2]\n")
    d["file"] = root / "a_file.txt"
    d["file"].write_text("I am a file.\n")
    return d


def cases(d: dict[str, Path], root: Path) -> list[tuple[str, list[str], str, int]]:
    """(id, argv, words the stderr line must contain, exit code)."""
    run, new = str(d["run"]), str(root / "new")  # `new` must never be created
    gen = ["generate", "--checkpoint", run, "--prompt", "ab", "--max-new-tokens", "2"]
    fc = ["forecast", "--checkpoint", str(d["tsrun"]), "--csv", str(d["csv"]), "--column", "value", "--horizon", "3"]
    prof = ["experts", "profile", "--checkpoint", run, "--prompts-a", str(d["prompts"]), "--prompts-b",
            str(d["prompts"])]
    remix = ["remix", "--checkpoint", run, "--reference", str(d["ref"]), "--inputs", str(d["ref"])]
    export = ["export", "--checkpoint", run, "--family", "deepseek"]
    train = ["train", "--config", LM, *TINY]
    out = f"train.output_dir={new}"
    return [
        # ---- configs
        ("config_binary", ["train", "--config", str(d["bin"])], "is not a YAML text file", 1),
        ("config_directory", ["train", "--config", str(d["emptydir"])], "is a directory; pass the YAML file", 1),
        ("config_run_directory", ["train", "--config", run], f"--config {run}/config.yaml", 1),
        ("config_missing", ["train", "--config", str(root / "missing.yaml")], "does not exist", 1),
        ("config_empty", ["train", "--config", ""], "--config is empty", 1),
        ("config_run_binary", ["train", "--config", str(d["binrun"] / "config.yaml")], "is not a YAML text file", 1),
        ("config_nul_bytes", ["train", "--config", str(d["nul"])], "NUL bytes", 1),
        ("config_not_mapping", ["train", "--config", str(d["list"])], "must contain a mapping", 1),
        ("config_bad_yaml", ["train", "--config", str(d["badyaml"])], "is not valid YAML", 1),
        ("info_config_binary", ["info", "--config", str(d["bin"])], "is not a YAML text file", 1),
        ("unknown_key", [*train, "model.moe.num_expert=3", out], "unknown config key 'model.moe.num_expert'", 1),
        ("bad_family", [*train, "model.family=nope", out], "model.family='nope' is not valid", 1),
        ("override_without_equals", [*train, "train.steps", out], "must look like section.key=value", 1),
        ("steps_not_int", [*train, "train.steps=many", out], "train.steps must be an integer", 1),
        ("steps_zero", [*train, "train.steps=0", out], "train.steps=0 trains nothing", 1),
        ("steps_negative", [*train, "train.steps=-1", out], "train.steps must be >= 0", 1),
        ("batch_zero", [*train, "train.batch_size=0", out], "train.batch_size must be positive", 1),
        ("lr_negative", [*train, "train.learning_rate=-1", out], "train.learning_rate must be a positive", 1),
        ("mesh_too_big", [*train, "mesh.data=3", out], "uses 3 devices but 1 are available", 1),
        ("no_config", ["train", "train.steps=3"], "--config is required", 1),
        # ---- data files
        ("tokenizer_missing", [*train, f"data.tokenizer={root / 'missing.json'}", out], "does not exist", 1),
        ("tokenizer_empty", [*train, "data.tokenizer=", out], "data.tokenizer is empty", 1),
        ("tokenizer_binary", [*train, f"data.tokenizer={d['bin']}", out], "is not a Hugging Face tokenizer", 1),
        ("tokenizer_directory", [*train, f"data.tokenizer={d['emptydir']}", out], "is a directory", 1),
        ("tokenizer_not_json", [*train, f"data.tokenizer={d['notjson']}", out], "is not valid JSON", 1),
        ("tokenizer_other_json", [*train, f"data.tokenizer={d['jsonnotok']}", out], "not a Hugging Face tokenizer",
         1),
        ("data_missing", [*train, f"data.path={root / 'missing.txt'}", out], "does not exist", 1),
        ("data_binary", [*train, f"data.path={d['bintxt']}", out], "is not valid UTF-8", 1),
        ("data_unsupported", [*train, f"data.path={d['bin']}", out], "use a .txt file", 1),
        ("data_path_empty", [*train, "data.path=", out], "data.path is empty", 1),
        ("data_empty", [*train, f"data.path={d['empty']}", out], "contains no text", 1),
        # ---- output directories
        ("output_dir_is_file", [*train, f"train.output_dir={d['file']}"], "is a file, not a directory", 1),
        ("output_dir_under_file", [*train, f"train.output_dir={d['file']}/run"], "is a file, not a directory", 1),
        ("output_dir_user_files", [*train, f"train.output_dir={d['userdir']}"], "not a jaxmoe run directory", 1),
        ("output_dir_has_checkpoints", [*train, f"train.output_dir={run}"], "already holds checkpoints", 1),
        # ---- resume
        ("resume_finished", ["train", "--resume", run], "already reached step 4 (train.steps=4)", 0),
        ("resume_batch_change", ["train", "--resume", run, "train.steps=6", "train.batch_size=2"],
         "train.batch_size (4 -> 2)", 1),
        ("resume_seq_change", ["train", "--resume", run, "train.steps=6", "data.seq_len=16"],
         "data.seq_len (32 -> 16)", 1),
        ("resume_model_change", ["train", "--resume", run, "train.steps=6", "model.moe.num_experts=8"],
         "another model config: model.moe.num_experts (4 vs 8)", 1),
        ("resume_missing", ["train", "--resume", str(root / "gone")], "does not exist", 1),
        ("resume_not_run", ["train", "--resume", str(d["userdir"])], "is not a jaxmoe run directory", 1),
        ("resume_two_dirs", ["train", "--resume", run, f"train.output_dir={new}"], "name two run directories", 1),
        ("resume_all_damaged", ["train", "--resume", str(d["all_damaged"]), "train.steps=6"],
         "no intact checkpoint", 1),
        # ---- generate
        ("top_p_zero", [*gen, "--top-p", "0"], "--top-p must be in (0, 1]", 1),
        ("top_p_above_one", [*gen, "--top-p", "1.5"], "--top-p must be in (0, 1]", 1),
        ("temperature_negative", [*gen, "--temperature", "-1"], "--temperature must be a number >= 0", 1),
        ("top_p_nan", [*gen, "--top-p", "nan"], "--top-p must be in (0, 1]", 1),
        ("temperature_nan", [*gen, "--temperature", "nan"], "--temperature must be a number >= 0", 1),
        ("top_k_negative", [*gen, "--top-k", "-1"], "--top-k must be >= 0", 1),
        ("top_k_not_int", [*gen, "--top-k", "x"], "invalid int value: 'x'", 2),
        ("max_new_tokens_zero", [*gen, "--max-new-tokens", "0"], "--max-new-tokens must be at least 1", 1),
        ("scmoe_alpha", [*gen, "--contrastive", "scmoe", "--alpha", "2"], "--alpha must be in [0, 1]", 1),
        ("disable_unknown_expert", [*gen, "--disable-experts", "0:9"], "expert 9 does not exist", 1),
        ("prompt_missing", ["generate", "--checkpoint", run], "the following arguments are required: --prompt", 2),
        ("checkpoint_missing", [*gen[:1], "--checkpoint", str(root / "gone"), *gen[3:]], "does not exist", 1),
        ("checkpoint_not_run", [*gen[:1], "--checkpoint", str(d["userdir"]), *gen[3:]], "not a jaxmoe run", 1),
        ("checkpoint_empty", [*gen[:1], "--checkpoint", "", *gen[3:]], "--checkpoint is empty", 1),
        ("checkpoint_is_file", [*gen[:1], "--checkpoint", str(d["file"]), *gen[3:]], "is a file", 1),
        ("checkpoint_binary_config", [*gen[:1], "--checkpoint", str(d["binrun"]), *gen[3:]],
         "is not a YAML text file", 1),
        ("checkpoint_time_series", [*gen[:1], "--checkpoint", str(d["tsrun"]), *gen[3:]],
         "needs a language model (model.family lm); this checkpoint is a time_moe model", 1),
        ("checkpoint_none_complete", [*gen[:1], "--checkpoint", str(d["emptyrun"]), *gen[3:]],
         "no complete checkpoint", 1),
        ("step_missing", [*gen, "--step", "7"], "there is no checkpoint 7", 1),
        ("damaged_falls_back", [*gen[:1], "--checkpoint", str(d["damaged"]), *gen[3:]],
         "checkpoint 4 in", 0),
        ("damaged_explicit_step", [*gen[:1], "--checkpoint", str(d["damaged"]), *gen[3:], "--step", "4"],
         "is damaged: ", 1),
        ("all_damaged", [*gen[:1], "--checkpoint", str(d["all_damaged"]), *gen[3:]], "no intact checkpoint", 1),
        # ---- forecast / evaluate
        ("forecast_language_model", ["forecast", "--checkpoint", run, *fc[3:]],
         "needs a forecasting model (model.family time_moe, moirai_moe, s_mamba or spacetime)", 1),
        ("forecast_csv_binary", [*fc[:3], "--csv", str(d["bin"]), *fc[5:]], "is not a UTF-8 text file", 1),
        ("forecast_csv_missing", [*fc[:3], "--csv", str(root / "gone.csv"), *fc[5:]], "does not exist", 1),
        ("forecast_csv_directory", [*fc[:3], "--csv", str(d["emptydir"]), *fc[5:]], "is a directory", 1),
        ("forecast_horizon_zero", [*fc[:-1], "0"], "--horizon must be a positive number", 1),
        ("forecast_plot_directory", [*fc, "--plot", str(d["emptydir"])], "is a directory; give a file path", 1),
        ("forecast_json_under_file", [*fc, "--json", f"{d['file']}/f.json"], "is a file, not a directory", 1),
        ("evaluate_unknown_suite", ["evaluate", "--suite", "foo"], "choose real, zero_shot or one series: co2", 1),
        ("evaluate_language_model", ["evaluate", "--checkpoint", run],
         "`evaluate` needs a forecasting model", 1),
        ("evaluate_data_missing", ["evaluate", "--data", str(root / "gone")], "does not exist", 1),
        ("evaluate_data_file", ["evaluate", "--data", str(d["file"])], "is a file; give a directory", 1),
        ("evaluate_horizon_zero", ["evaluate", "--horizon", "0"], "--horizon must be a positive number", 1),
        ("evaluate_unknown_baseline", ["evaluate", "--baselines", "magic"], "unknown baseline 'magic'", 1),
        # ---- experts / remix
        ("prompts_binary", [*prof[:5], str(d["bin"]), *prof[6:]], "is not a UTF-8 text file", 1),
        ("prompts_missing", [*prof[:5], str(root / "gone.txt"), *prof[6:]], "does not exist", 1),
        ("prompts_directory", [*prof[:5], str(d["emptydir"]), *prof[6:]], "is a directory", 1),
        ("prompts_empty", [*prof[:5], str(d["empty"]), *prof[6:]], "has no non-empty lines", 1),
        ("profile_labels", [*prof, "--labels", "one"], "--labels must name two sets", 1),
        ("profile_plot_directory", [*prof, "--plot", str(d["emptydir"])], "is a directory", 1),
        ("profile_time_series", ["experts", "profile", "--checkpoint", str(d["tsrun"]), *prof[4:]],
         "needs a language model (model.family lm); this checkpoint is a time_moe model", 1),
        ("experts_no_action", ["experts"], "choose an action", 1),
        ("reference_binary", [*remix[:4], str(d["bin"]), *remix[5:]], "is not a UTF-8 text file", 1),
        ("reference_broken", [*remix[:4], str(d["broken"]), *remix[5:]], "line 2 is not valid JSON", 1),
        ("reference_no_answer", [*remix[:4], str(d["noanswer"]), *remix[5:]], "needs a string \"answer\"", 1),
        ("remix_inputs_missing", [*remix[:6], str(root / "gone.jsonl")], "does not exist", 1),
        ("remix_inputs_binary", [*remix[:6], str(d["bin"])], "is not a UTF-8 text file", 1),
        ("remix_neighbours_zero", [*remix, "--neighbours", "0"], "--neighbours must be at least 1", 1),
        ("remix_time_series", ["remix", "--checkpoint", str(d["tsrun"]), *remix[3:]], "needs a language model", 1),
        # ---- export / import / info / data
        ("export_out_user_files", [*export, "--out", str(d["userdir"])], "was not written by `jaxmoe export`", 1),
        ("export_out_file", [*export, "--out", str(d["file"])], "is a file, not a directory", 1),
        ("export_out_run", [*export, "--out", run], "was not written by `jaxmoe export`", 1),
        ("export_checkpoint_missing", ["export", "--checkpoint", str(root / "gone"), "--family", "deepseek",
                                       "--out", new], "does not exist", 1),
        ("export_family_mismatch", ["export", "--checkpoint", run, "--family", "mixtral", "--out", new],
         "has no equivalent in mixtral", 1),
        ("export_shard_size", [*export, "--out", new, "--shard-size", "2XB"], "shard", 1),
        ("export_stablehlo_batch", [*export, "--out", new, "--stablehlo-batch", "0"],
         "--stablehlo-batch must be at least 1", 1),
        ("export_step_missing", [*export, "--out", new, "--step", "9"], "there is no checkpoint 9", 1),
        ("export_damaged_step", ["export", "--checkpoint", str(d["damaged"]), "--family", "deepseek", "--out", new,
                                 "--step", "4"], "is damaged: ", 1),
        ("import_hf_missing", ["import", "--hf", str(root / "gone"), "--out", new], "does not exist", 1),
        ("import_hf_file", ["import", "--hf", str(d["file"]), "--out", new], "is a file; give a directory", 1),
        ("import_hf_not_hf", ["import", "--hf", str(d["userdir"]), "--out", new], "has no config.json", 1),
        ("import_out_user_files", ["import", "--hf", str(d["userdir"]), "--out", str(d["userdir"])],
         "is not empty", 1),
        ("import_hf_binary_config", ["import", "--hf", str(d["hfbin"]), "--out", new], "config.json is not a text file",
         1),
        ("import_hf_config_not_object", ["import", "--hf", str(d["hflist"]), "--out", new], "holds no JSON object",
         1),
        ("info_hf_binary_config", ["info", "--hf", str(d["hfbin"])], "config.json is not a text file", 1),
        ("import_out_run", ["import", "--hf", str(d["userdir"]), "--out", run], "already holds checkpoints", 1),
        ("import_out_run_force", ["import", "--hf", str(d["userdir"]), "--out", run, "--force"],
         "already holds checkpoints", 1),
        ("import_out_file", ["import", "--hf", str(d["userdir"]), "--out", str(d["file"])], "is a file", 1),
        ("info_hf_missing", ["info", "--hf", str(root / "gone")], "does not exist", 1),
        ("info_nothing", ["info"], "nothing to show", 1),
        ("data_out_file", ["data", "build-ts-corpus", str(d["file"])], "is a file, not a directory", 1),
        ("data_no_action", ["data"], "choose an action", 1),
        ("data_min_length", ["data", "build-ts-corpus", new, "--min-length", "1"], "--min-length must be at least 2",
         1),
        ("unknown_command", ["frobnicate"], "invalid choice: 'frobnicate'", 2),
    ]


def run_all(tmp_path_factory):
    """Runs every case (two at a time) against one shared tree; returns the tree digests
    before and after and the results."""
    root = tmp_path_factory.mktemp("bad_inputs")
    cache = tmp_path_factory.mktemp("jax_cache")  # outside the hashed tree
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
           "MPLBACKEND": "Agg"}
    env.pop("JAXMOE_FAULT", None)
    inputs = make_inputs(root, env)
    table = cases(inputs, root)
    before = tree_digest(root)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda case: (case, jaxmoe(env, case[1])), table))
    return before, tree_digest(root), done


def test_bad_inputs(tmp_path_factory):
    """The whole table in one test (one shared run; a module fixture would be rebuilt on
    every pytest-xdist worker that got one of several tests)."""
    before, after, done = run_all(tmp_path_factory)
    names = [case[0] for case, _ in done]
    assert len(done) >= 60 and len(set(names)) == len(names)

    failures = []
    for (name, argv, words, code), r in done:
        lines = r.stderr.strip().splitlines()
        ok = (r.returncode == code and len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr
              and (code == 0 or lines[0].startswith("error:")))
        if not ok:
            failures.append(f"{name}: exit {r.returncode} (want {code}), {len(lines)} stderr lines, want "
                            f"{words!r}:\n{r.stderr[-1500:]}")
    assert not failures, f"{len(failures)} of {len(done)} cases failed:\n" + "\n\n".join(failures)

    # the documented zero exits say what happened
    by_name = {case[0]: r for case, r in done}
    assert "nothing to train and nothing changed" in by_name["resume_finished"].stderr
    fallback = by_name["damaged_falls_back"]
    assert "is damaged" in fallback.stderr and "using checkpoint 2, the newest intact one" in fallback.stderr
    assert fallback.stdout.startswith("ab")

    # nothing was changed or created
    changed = sorted(k for k in before if before[k] != after.get(k))
    created = sorted(set(after) - set(before))
    assert not changed and not created, (changed, created)
