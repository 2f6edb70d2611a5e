"""The CLI's vocabulary and output (issue 12): flags spelled as the API keywords, old spellings
refused with a hint, Deployment flags generated from their declarations, messages naming flags,
--output checked before any work, --format table|csv|json, --quiet, tables <= 100 characters and
one set of number formats."""

import io
import json
import os
import time

import numpy as np
import pytest

import mcroute as mr
from mcroute._cost.deployment import DEPLOYMENT_OPTIONS
from mcroute.cli import main
from mcroute.cli import output as output_mod
from mcroute.cli.app import make_parser
from mcroute.cli.common import RENAMED, cli_names, name_flags
from mcroute.cli.deployment import DEPLOYMENT_FLAGS, deployment_flags

SIM = ["simulate", "-E", "16", "-k", "2", "-b", "1,8", "-n", "40", "-s", "3"]
THR = ["throughput", "qwen3-30b-a3b", "-H", "h200", "-g", "1", "-c", "4k,32k", "-n", "16",
       "-s", "0"]
QS = ["qs", "qwen3-30b-a3b", "-g", "1", "-c", "4k", "-n", "8", "--n-q-samples", "4"]


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    """A small canonical trace with decode steps and microbatch ids (trace fit/check run)."""
    d = tmp_path_factory.mktemp("vocab")
    rng = np.random.default_rng(5)
    n = 96
    ex = np.stack([rng.permutation(8)[:2] for _ in range(n * 2)]).reshape(n, 2, 2)
    mr.save_trace(mr.Trace(ex, n_experts=8, sequence=np.arange(n) % 8, step=np.arange(n) // 8,
                           batch=np.arange(n) // 8, prefill=np.zeros(n, bool), model="toy"),
                  d / "t.npz")
    return d / "t.npz"


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# -- one vocabulary ---------------------------------------------------------------------------

OLD = [  # (argv before the old flag, old flag, its value)
    (["simulate", "-E", "8", "-k", "2"], "--experts", "8"),
    (["simulate", "-E", "8", "-k", "2"], "--batch", "8"),
    (["simulate", "-E", "8", "-k", "2"], "--trials", "8"),
    (["simulate", "-E", "8", "-k", "2"], "--layers", "2"),
    (["simulate", "-E", "8", "-k", "2"], "--devices", "2"),
    (["throughput", "deepseek-v3", "-H", "h200"], "--gpus", "8"),
    (["throughput", "deepseek-v3", "-H", "h200", "-g", "8"], "--batch", "8"),
    (["throughput", "deepseek-v3", "-H", "h200", "-g", "8"], "--trials", "8"),
    (["throughput", "deepseek-v3", "-H", "h200", "-g", "8"], "--attention", "data"),
    (["qs"], "--gpus", "8"),
    (["qs"], "--dense-gpus", "8"),
    (["qs"], "--trials", "8"),
    (["qs"], "--q-samples", "8"),
    (["qs"], "--attention", "data"),
    (["trace", "inspect", "x.npz"], "--experts", "8"),
    (["trace", "fit", "x.npz"], "--boot", "20"),
    (["trace", "check", "x.npz"], "--trials", "20"),
    (["q-estimate", "deepseek-v3"], "--boot", "20"),
    (["sweep", "x.toml", "--output", "y.nc"], "--trials", "20"),
]


@pytest.mark.parametrize("argv,old,value", OLD, ids=[f"{a[0]} {o}" for a, o, _ in OLD])
@pytest.mark.parametrize("form", ["space", "equals"])
def test_old_spelling_refused_with_the_new_flag(argv, old, value, form, capsys):
    extra = [old, value] if form == "space" else [f"{old}={value}"]
    assert main(argv + extra) == 2
    line = _one_error_line(capsys)
    assert f"{old} was renamed {RENAMED[old]}" in line


@pytest.mark.parametrize("argv,needle", [
    # a prefix of --n-experts does not count: the required flag is missing
    (["simulate", "--n-exp", "8", "--top-k", "2"], "required: -E/--n-experts"),
    (["simulate", "-E", "8", "-k", "2", "--batch-s", "8"], "unrecognized arguments: --batch-s"),
    (["qs", "--n-q", "4"], "unrecognized arguments: --n-q"),
    (["throughput", "deepseek-v3", "-H", "h200", "-g", "8", "--expert-par", "8"],
     "unrecognized arguments: --expert-par"),
])
def test_abbreviations_are_not_accepted(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in _one_error_line(capsys)


def test_every_long_flag_of_the_labeled_commands_is_an_api_keyword():
    """simulate's, throughput's and qs's flags are the keywords of the function they call."""
    import inspect

    from mcroute._labeled.qs import qs_analysis
    from mcroute._labeled.simulate import simulate
    from mcroute._labeled.throughput import decode_throughput

    names = cli_names(make_parser())
    # CLI-only flags (printing, files, the run's own controls) and the simulate table's inputs
    own = {"output", "format", "wide", "quiet", "help", "seed", "context", "routing", "q",
           "batch_per_gpu", "tpot", "dense_model", "dense_style", "dense_n_gpus",
           "n_q_samples", "ci_prob", "method", "capacity_factor", "top_k", "n_experts"}
    keywords = (set(inspect.signature(simulate).parameters)
                | set(inspect.signature(decode_throughput).parameters)
                | set(inspect.signature(qs_analysis).parameters)
                | {o.name for o in DEPLOYMENT_OPTIONS})
    for cmd in ("simulate", "throughput", "qs"):
        sub = make_parser()._subparsers._group_actions[0].choices[cmd]
        for action in sub._actions:
            longs = [f for f in action.option_strings if f.startswith("--")]
            if not longs or action.help == "==SUPPRESS==" or action.dest in ("help",):
                continue
            assert longs[0] == "--" + action.dest.replace("_", "-"), (cmd, longs)
            assert action.dest in keywords | own, (cmd, action.dest)
    assert names["n_experts"] == "--n-experts" and names["batch_size"] == "--batch-size"


def test_deployment_flags_are_generated_from_the_declarations():
    """Every declared CLI option of Deployment is a flag of throughput and qs, with its short
    alias, choices and metavar; the flags given come back as the same keywords (identity)."""
    parser = make_parser()
    subs = parser._subparsers._group_actions[0].choices
    declared = [o for o in DEPLOYMENT_OPTIONS if o.cli]
    assert {o.name for o in DEPLOYMENT_FLAGS} == {o.name for o in declared} - {
        "model", "hardware", "n_gpus"}
    for cmd in ("throughput", "qs"):
        actions = {a.dest: a for a in subs[cmd]._actions}
        for o in declared:
            a = actions[o.name]
            assert o.flag in a.option_strings, (cmd, o.name)
            if o.short:
                assert o.short in a.option_strings, (cmd, o.name)
            if o.choices:
                assert set(o.choices) <= set(a.choices), (cmd, o.name)
    # sample values for every generated flag: the parsed keywords are the declared names
    sample = {"int": "1", "float": "0.5", "tokens": "4k", "dtype": "bf16",
              "acceptance": "0.5", "path": "generic", "placement": "balanced"}
    argv = ["throughput", "m", "-H", "h200", "-g", "8"]
    given = set()
    for o in DEPLOYMENT_FLAGS:
        if o.type == "bool":
            argv.append(o.flag)
        elif o.choices:
            argv += [o.flag, o.choices[0]]
        else:
            argv += [o.flag, sample[o.type]]
        if o.type != "placement":  # 'balanced' is the default: not passed
            given.add(o.name)
    opts = deployment_flags(parser.parse_args(argv))
    assert set(opts) == given
    assert opts["hbm_fraction"] == 0.5 and opts["enforce_max_context"] is True
    assert opts["encoder_context"] == 4096 and opts["mtp_acceptance"] == 0.5


def test_generated_flags_reach_the_deployment(capsys, tmp_path):
    out = tmp_path / "t.nc"
    assert main(THR[:-4] + ["-n", "4", "-s", "0", "--interconnect-efficiency", "0.8",
                            "--memory-layout", "ideal", "--no-calibration-uncertainty",
                            "--hbm-fraction", "0.85", "--quiet", "-o", str(out)]) == 0
    import xarray as xr

    with xr.open_dataset(out, engine="h5netcdf") as ds:
        dep = json.loads(ds.attrs["deployment"])
    assert dep["interconnect_efficiency"] == 0.8 and dep["hbm_fraction"] == 0.85
    assert dep["memory_layout"] == "ideal" and dep["calibration_uncertainty"] is False


# -- messages name flags ----------------------------------------------------------------------

FLAGS = {"n_experts": "--n-experts", "model": "MODEL", "routing": "--routing",
         "hbm_fraction": "--hbm-fraction", "context": "--context"}


@pytest.mark.parametrize("text,expected", [
    ("n_experts must be an integer", "--n-experts must be an integer"),
    ("model='x' is dense", "MODEL='x' is dense"),
    ("routing must be a Routing", "--routing must be a Routing"),
    ("only 136 GB usable (hbm_fraction=0.9)", "only 136 GB usable (--hbm-fraction=0.9)"),
    ("real_batch_check needs at least 3 decode microbatches",
     "the real-batch check (trace check) needs at least 3 decode microbatches"),
    # not rewritten: unknown names, quoted names, English words, attribute access
    ("layer_seed must be an int", "layer_seed must be an int"),
    ("field 'n_experts' of the card", "field 'n_experts' of the card"),
    ("the context 4096 exceeds max_context", "the context 4096 exceeds max_context"),
    ("spec.n_experts differs", "spec.n_experts differs"),
])
def test_messages_name_flags_not_keywords(text, expected):
    assert name_flags(text, FLAGS) == expected


@pytest.mark.parametrize("argv,needle", [
    (["simulate", "-E", "8", "-k", "2", "--n-devices", "3", "-n", "4"], "--n-devices must"),
    (THR[:4] + ["-g", "4", "--expert-parallel", "3"], "--expert-parallel must divide --n-gpus"),
])
def test_errors_from_below_name_the_flag(argv, needle, capsys):
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert needle in line and "n_devices" not in line and "expert_parallel" not in line


# -- --output checked before any work ---------------------------------------------------------

HUGE = str(10**9)  # trials that would run for hours


@pytest.mark.parametrize("argv", [
    ["simulate", "-E", "64", "-k", "4", "-n", HUGE],
    ["throughput", "deepseek-v3", "-H", "h200", "-g", "8", "-n", HUGE],
    ["qs", "deepseek-v3", "-n", HUGE],
    ["q-estimate", "deepseek-v3", "--n-boot", "100000000"],
    ["trace", "check", "TRACE", "-n", HUGE],
    ["trace", "fit", "TRACE", "--n-boot", HUGE],
], ids=["simulate", "throughput", "qs", "q-estimate", "trace-check", "trace-fit"])
@pytest.mark.parametrize("bad", ["xlsx", "no-folder", "not-writable"])
def test_bad_output_refused_before_any_work(argv, bad, trace_file, tmp_path, capsys):
    if bad == "not-writable":
        if os.geteuid() == 0:
            pytest.skip("root may write into any folder")
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        target, needle = folder / "out.nc", "not writable"
    elif bad == "xlsx":
        target, needle = tmp_path / "out.xlsx", "must end in"
    else:
        target, needle = tmp_path / "missing" / "out.nc", "does not exist"
    argv = [str(trace_file) if a == "TRACE" else a for a in argv]
    t0 = time.perf_counter()
    assert main(argv + ["--output", str(target)]) == 2
    elapsed = time.perf_counter() - t0
    line = _one_error_line(capsys)
    assert "--output" in line and needle in line
    assert elapsed < 10, elapsed  # refused at once, not after the (hours-long) run
    assert not target.exists()


def test_seed_on_every_sampling_command():
    """Every command that draws random numbers takes --seed (-s) and prints it."""
    subs = make_parser()._subparsers._group_actions[0].choices
    trace_subs = subs["trace"]._subparsers._group_actions[0].choices
    for p in (subs["simulate"], subs["throughput"], subs["qs"], subs["q-estimate"],
              trace_subs["fit"], trace_subs["check"]):
        flags = {f for a in p._actions for f in a.option_strings}
        assert {"--seed", "-s"} <= flags, p.prog


# -- --format, --quiet, width, number formats --------------------------------------------------

def test_format_csv_and_json_carry_the_result_values(tmp_path, capsys):
    import pandas as pd
    import xarray as xr

    out = tmp_path / "s.nc"
    assert main(SIM + ["--format", "csv", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    table = pd.read_csv(io.StringIO(text), comment="#")
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        m = ds["active_experts_mean"].mean("layer").values
        lo = ds["active_experts_ci"].mean("layer").values[:, 0]
    assert list(table["batch_size"]) == [1, 8]
    np.testing.assert_allclose(table["active_experts"], m, rtol=1e-12)
    np.testing.assert_allclose(table["active_experts_ci_lower"], lo, rtol=1e-12)
    assert {"active_experts_p5", "active_experts_p95", "device_imbalance"} <= set(table)
    assert main(SIM + ["--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["notes"][0].endswith("seed 3")
    assert [r["batch_size"] for r in doc["rows"]] == [1, 8]
    np.testing.assert_allclose([r["active_experts"] for r in doc["rows"]], m, rtol=1e-12)


def test_json_rows_have_the_same_keys_when_a_point_is_infeasible(capsys):
    assert main(THR[:-6] + ["-c", "4k", "-b", "8,99999999", "-n", "4", "-s", "0",
                            "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 2 and rows[0].keys() == rows[1].keys()
    assert rows[0]["feasible"] is True and rows[1]["feasible"] is False
    assert rows[1]["throughput"] is None and "exceeds" in rows[1]["reason"]


def test_quiet_prints_nothing_and_still_writes(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(SIM + ["--quiet", "-o", str(out)]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
    assert out.stat().st_size > 0


def test_trace_format_flag_hints_at_input_format(trace_file, capsys):
    assert main(["trace", "inspect", str(trace_file), "--format", "npz"]) == 2
    assert "--input-format npz" in _one_error_line(capsys)
    assert main(["trace", "convert", str(trace_file), "--format", "npz", "-o", "x.npz"]) == 2
    assert "--input-format npz" in _one_error_line(capsys)
    assert main(["trace", "inspect", str(trace_file), "--input-format", "npz",
                 "--format", "csv"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")]
    assert lines[0].startswith("layer,n_tokens,") and len(lines) == 3  # header + 2 layers


@pytest.fixture
def tables(monkeypatch):
    """Every table a command prints, as rendered (text, hidden columns)."""
    seen = []
    real = output_mod.render_table

    def recording(columns, rows, wide=False):
        text, hidden = real(columns, rows, wide)
        seen.append((text, hidden, wide))
        return text, hidden

    monkeypatch.setattr(output_mod, "render_table", recording)
    return seen


@pytest.mark.parametrize("argv", [
    SIM, SIM + ["--n-layers", "2", "--n-devices", "2"], THR, THR + ["-b", "8,64"], QS,
    ["models"], ["hardware"], ["models", "switch-c-2048"],
    ["q-estimate", "qwen3-30b-a3b", "--n-boot", "50", "-s", "0"],
    ["trace", "inspect", "TRACE"], ["trace", "fit", "TRACE", "--n-boot", "20", "-s", "0"],
    ["trace", "check", "TRACE", "-n", "20", "-s", "0"],
], ids=lambda a: " ".join(a[:2]))
def test_tables_fit_100_characters(argv, tables, trace_file, capsys):
    argv = [str(trace_file) if a == "TRACE" else a for a in argv]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert tables, "no table printed"
    for table, hidden, _ in tables:
        assert max(len(line) for line in table.splitlines()) <= output_mod.WIDTH, table
        if hidden:  # named under the table
            assert f"hidden to fit {output_mod.WIDTH} characters: " in text
    tables.clear()
    assert main(argv + ["--wide"]) == 0
    capsys.readouterr()
    assert all(not hidden for _, hidden, _ in tables)  # --wide hides nothing


def test_throughput_and_qs_print_numbers_alike(capsys):
    """Contexts as 4k, throughputs with thousands separators, in both commands."""
    import re

    assert main(THR) == 0
    thr = capsys.readouterr().out
    assert main(QS) == 0
    qs = capsys.readouterr().out
    rate = r"\d{1,3}(,\d{3})+"  # >= 1000 tok/s at 4k on one H200 for this model
    assert re.search(rf"^\s+4k\s+\d+\s+[\d.]+ \([\d.]+-[\d.]+\)\s+{rate} \[{rate}, {rate}\]",
                     thr, re.M), thr
    assert re.search(rf"^\s+4k\s+\d+\s+\d+\s+{rate}\s+{rate}\s", qs, re.M), qs
    assert "e+0" not in thr and "4096" not in thr.split("\n", 5)[-1]


def test_number_formats():
    f = output_mod.fmt_value
    assert [f(4096, "tokens"), f(131072, "tokens"), f(5000, "tokens")] == ["4k", "128k", "5000"]
    assert [f(47070.4, "rate"), f(172.4, "rate"), f(12.34, "rate")] == ["47,070", "172", "12.3"]
    assert [f(37.56e9, "params"), f(671e9, "params"), f(1.571e12, "params")] == [
        "37.6B", "671B", "1,571B"]
    assert [f(None), f(float("nan")), f("infeasible")] == ["—", "—", "infeasible"]
    assert f(0.0421, "pct") == "+4.2%" and f(1978.9, "g") == "1978.9"


def test_unknown_names_fail_before_anything_is_printed(capsys):
    """A misspelt hardware card is refused (with "did you mean") before qs prints its header."""
    assert main(["qs", "-H", "h2000", "-n", "4"]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "did you mean h200" in cap.err and len(cap.err.strip().splitlines()) == 1


def test_a_command_that_cannot_load_is_one_line(monkeypatch, capsys):
    import mcroute.cli.app as app

    monkeypatch.setattr(app, "COMMAND_MODULES", [*app.COMMAND_MODULES, "mcroute.cli.no_such"])
    monkeypatch.delenv(app.DEBUG_ENV, raising=False)
    assert main(["models"]) == app.EXIT_INTERNAL
    line = _one_error_line(capsys)
    assert line.startswith("mcroute: internal error") and "no_such" in line


def test_infeasible_notes_name_flags(capsys):
    assert main(["throughput", "qwen3-30b-a3b", "-H", "h200", "-g", "1", "-c", "4k",
                 "-b", "99999999", "-n", "4", "-s", "0"]) == 0
    import re

    note = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("infeasible")]
    assert len(note) == 1 and re.fullmatch(
        r"infeasible: context 4k, batch 99999999: --batch-size 99999999 exceeds the admissible "
        r"\d+ at context 4096", note[0]), note


def test_a_keyword_is_named_as_the_flag_of_the_command_that_ran(tmp_path, capsys):
    """``model`` is the MODEL positional of qs but the --model flag of trace."""
    rows = ["model,hf_model,num_experts,top_k,domain,layer,selection,expert,count,n_tokens"]
    rows += [f"toy,org/toy,4,1,{d},0,topk,{e},{e + 1},10" for d in ("a", "b") for e in range(4)]
    (tmp_path / "h.csv").write_text("\n".join(rows) + "\n")
    assert main(["trace", "inspect", str(tmp_path / "h.csv")]) == 2
    line = _one_error_line(capsys)
    assert "--model=" in line and "--domain=" in line and "MODEL" not in line
    names = cli_names(make_parser()._subparsers._group_actions[0].choices["qs"])
    assert names["model"] == "MODEL" and names["n_gpus"] == "--n-gpus"


def _documented_command_lines():
    """(file, command words, flags) of every ``mcroute COMMAND ...`` line in the docs."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")),
             *sorted((root / "notebooks").glob("*.py")), *sorted((root / "examples").glob("*"))]
    line_re = re.compile(r"mcroute ((?:trace )?[a-z][a-z-]*)((?:[^`\n#|]|\\\n)*)")
    for f in files:
        for m in line_re.finditer(f.read_text(encoding="utf-8")):
            flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2))
            yield f.name, m.group(1).split(), flags


def test_documented_command_lines_use_existing_flags():
    """Every flag on a documented ``mcroute ...`` line exists on that command (so a renamed
    flag left in the README, docs, notebooks or examples fails here)."""
    subs = make_parser()._subparsers._group_actions[0].choices
    checked = 0
    for name, words, flags in _documented_command_lines():
        if words[0] not in subs:
            continue
        p = subs[words[0]]
        if len(words) > 1 and p._subparsers is not None:
            p = p._subparsers._group_actions[0].choices.get(words[1], p)
        known = {s for a in p._actions for s in a.option_strings}
        for flag in flags:
            assert flag in known, f"{name}: mcroute {' '.join(words)} has no {flag}"
            checked += 1
    assert checked > 20  # the README, cli.md, quality.md, plotting.md and sweeps.md lines


def _spellings(o):
    """(valid CLI text, its Python value, invalid CLI text or None, invalid Python value)."""
    if o.choices:
        return o.choices[0], o.choices[0], "bogus", "bogus"
    if o.type == "bool":
        return None, True, None, "yes"
    if o.type == "int":
        lo = int(o.minimum or 0) + (1 if o.open_min else 0)
        bad = int(o.maximum) + 1 if o.maximum is not None else lo - 1
        return str(lo), lo, str(bad), bad
    if o.type == "float":
        return "0.5", 0.5, "1.5" if o.maximum == 1.0 else "-1", 1.5 if o.maximum == 1.0 else -1.0
    if o.type == "tokens":
        return "4k", 4096, str(int(o.maximum) + 1), int(o.maximum) + 1
    if o.type == "dtype":
        return "bf16", "bf16", "fp7", "fp7"
    if o.type == "acceptance":
        return "0.5", 0.5, "2", 2.0
    if o.type == "path":
        return "generic", "generic", "no-such-kernel-card", "no-such-kernel-card"
    raise AssertionError(f"no sample values for type {o.type!r}")


#: Options whose value needs another one to be valid (cross-field rules).
_WITH = {"mtp_acceptance": {"mtp_depth": 1}, "replicate_dense": {"attention_parallel": "data"}}
_BASE = ("deepseek-v3", "h200", 8)


@pytest.mark.parametrize("opt", [o for o in DEPLOYMENT_FLAGS if o.type != "placement"],
                         ids=lambda o: o.name)
def test_cli_api_and_sweep_accept_the_same_values(opt):
    """One parametrised test over every Deployment option: the CLI flag, the API keyword and
    the sweep key accept the same value (as the same Python value) and refuse the same one."""
    from mcroute._cost.deployment import Deployment
    from mcroute.sweeps.params import normalize

    good_text, good, bad_text, bad = _spellings(opt)
    extra = _WITH.get(opt.name, {})
    extra_argv = [a for k, v in extra.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    parser = make_parser()
    base = ["throughput", _BASE[0], "-H", _BASE[1], "-g", str(_BASE[2])]
    argv = base + extra_argv + ([opt.flag] if good_text is None else [opt.flag, good_text])
    cli = deployment_flags(parser.parse_args(argv))
    assert cli[opt.name] == good
    swept = normalize(opt, good, "spec.toml: [fixed]")
    assert swept == good
    Deployment(*_BASE, **(extra | {opt.name: good}))  # the API accepts it
    # the same bad value is refused by all three (the sweep at latest when the cell's
    # Deployment is built, as for dtypes and card names)
    with pytest.raises(mr.McrouteError):
        Deployment(*_BASE, **(extra | {opt.name: bad}))
    with pytest.raises(mr.McrouteError):
        Deployment(*_BASE, **(extra | {opt.name: normalize(opt, bad, "spec.toml: [fixed]")}))
    if bad_text is not None:
        try:
            args = parser.parse_args(base + extra_argv + [opt.flag, bad_text])
        except SystemExit:  # refused by argparse (choices)
            return
        with pytest.raises(mr.McrouteError):
            Deployment(*_BASE, **deployment_flags(args))


@pytest.mark.filterwarnings("default::UserWarning")  # the suite turns warnings into errors
def test_quiet_silences_warnings(monkeypatch, capsys):
    import warnings

    import mcroute.cli.simulate as sim

    real = sim.simulate

    def warn_then_run(*a, **k):
        warnings.warn("a modelling caveat", UserWarning, stacklevel=1)
        return real(*a, **k)

    monkeypatch.setattr(sim, "simulate", warn_then_run)
    assert main(SIM) == 0
    assert "mcroute: warning: a modelling caveat (UserWarning)" in capsys.readouterr().err
    assert main(SIM + ["--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
