"""Card names: hardware aliases, "did you mean" for unknown names, and Hugging Face config.json
paths accepted wherever a model name is (API and CLI)."""

from __future__ import annotations

import json

import pytest

import mcroute as mr
from mcroute import McrouteError, ModelSpec, load_hardware, load_model
from mcroute._cards.cards import HARDWARE_ALIASES
from mcroute.cli import main

# The numbers of the released config.json files, as listed in ../shared/reference/models.md
# (Mixtral-8x7B [S11][S22]; DeepSeek-V3 [S1][S2], whose config stores the weights in FP8).
MIXTRAL_8X7B = {
    "model_type": "mixtral", "_name_or_path": "mistralai/Mixtral-8x7B-v0.1",
    "num_hidden_layers": 32, "hidden_size": 4096, "vocab_size": 32000,
    "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
    "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
DEEPSEEK_V3 = {
    "model_type": "deepseek_v3", "_name_or_path": "deepseek-ai/DeepSeek-V3",
    "num_hidden_layers": 61, "hidden_size": 7168, "vocab_size": 129280,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 256,
    "num_experts_per_tok": 8, "n_shared_experts": 1, "first_k_dense_replace": 3,
    "moe_layer_freq": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
    "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "n_group": 8, "topk_group": 4, "num_nextn_predict_layers": 1,
    "max_position_embeddings": 163840, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
}


def _arch(m):
    return (m.decode_layers, m.hidden, m.vocab, m.embedding_params, m.lm_head_params,
            m.other_resident_params)


def _config_dir(tmp_path, cfg, folder="model"):
    d = tmp_path / folder
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


# ----------------------------------------------------------------------------------------------
# Aliases
# ----------------------------------------------------------------------------------------------
def test_aliases_point_at_cards():
    cards = mr.list_hardware()
    assert HARDWARE_ALIASES["h100"] == "h100-sxm"
    for alias, card in HARDWARE_ALIASES.items():
        assert card in cards and alias not in cards          # an alias never shadows a card
        assert load_hardware(alias) == load_hardware(card)
        assert load_hardware(alias.upper()).name == card     # case-insensitive like card names
    assert load_hardware("h200").name == "h200"              # a card name stays itself
    assert not set(HARDWARE_ALIASES) & set(mr.list_hardware())   # list_hardware: card names only


def test_alias_works_in_deployment_and_docs_example():
    # docs/plotting.md selects hardware=h100; the card it stands for is the H100 SXM
    dep = mr.Deployment("mixtral-8x7b", "h100", 2)
    assert dep.hardware.name == "h100-sxm"


# ----------------------------------------------------------------------------------------------
# Did you mean
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("load, given, suggestion", [
    (load_model, "deepseek_v3", "deepseek-v3"),
    (load_model, "qwen3-235b", "qwen3-235b-a22b"),
    (load_model, "mixtral-8x7", "mixtral-8x7b"),
    (load_hardware, "h10", "h100"),
    (load_hardware, "mi300", "mi300x"),
    (load_hardware, "h100sxm", "h100-sxm"),
])
def test_did_you_mean(load, given, suggestion):
    with pytest.raises(McrouteError) as e:
        load(given)
    msg = str(e.value)
    kind = "model" if load is load_model else "hardware"
    assert msg.startswith(f"unknown {kind} {given!r} (did you mean ")
    hint = msg.split("did you mean ", 1)[1].split("?", 1)[0].split(", ")
    assert suggestion in hint and len(hint) <= 3
    assert "; known: " in msg                                 # and the full list still follows


def test_no_suggestion_when_nothing_is_close():
    with pytest.raises(McrouteError) as e:
        load_model("gpt-5")
    assert "did you mean" not in str(e.value) and "unknown model 'gpt-5'; known: " in str(e.value)
    with pytest.raises(McrouteError) as e:
        load_hardware("tpu-v5")
    msg = str(e.value)
    assert "did you mean" not in msg
    assert "h100-sxm" in msg and "aliases: h100 = h100-sxm" in msg


def test_cli_names(capsys):
    assert main(["hardware", "h100"]) == 0
    assert "H100 SXM5" in capsys.readouterr().out
    assert main(["models", "deepseek_v3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean deepseek-v3" in err


# ----------------------------------------------------------------------------------------------
# Hugging Face config.json wherever a model name is accepted
# ----------------------------------------------------------------------------------------------
def test_load_model_reads_config_json_file_and_folder(tmp_path):
    d = _config_dir(tmp_path, MIXTRAL_8X7B)
    by_file = load_model(d / "config.json")
    assert by_file == load_model(d) == load_model(str(d)) == load_model(str(d / "config.json"))
    assert by_file == ModelSpec.from_hf_config(d / "config.json")
    assert by_file.name == "mixtral-8x7b-v0.1" and by_file.release_dtype == "bf16"
    assert _arch(by_file) == _arch(load_model("mixtral-8x7b"))


def test_config_folder_by_bare_name_in_working_dir(tmp_path, monkeypatch):
    _config_dir(tmp_path, MIXTRAL_8X7B, folder="Mixtral-8x7B-v0.1")
    monkeypatch.chdir(tmp_path)
    assert load_model("Mixtral-8x7B-v0.1").name == "mixtral-8x7b-v0.1"
    (tmp_path / "deepseek-v3").mkdir()                    # a card name wins over a folder
    assert load_model("deepseek-v3").source[0].startswith("deepseek-ai/DeepSeek-V3")


def test_config_json_release_dtype_and_deployment(tmp_path):
    d = _config_dir(tmp_path, DEEPSEEK_V3)
    m = load_model(d)
    assert m.release_dtype == "fp8" == load_model("deepseek-v3").release_dtype
    assert _arch(m) == _arch(load_model("deepseek-v3"))
    assert (m.n_groups, m.topk_groups) == (8, 4)
    dep = mr.Deployment(str(d / "config.json"), "h200", 8)
    assert dep.model == m


def test_config_path_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(McrouteError, match="holds no config.json") as e:
        load_model(empty)
    assert str(empty) in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(McrouteError, match="not valid JSON") as e:
        load_model(bad)
    assert str(bad) in str(e.value)
    d = _config_dir(tmp_path, dict(MIXTRAL_8X7B, num_local_experts=1))   # top-2 of 1 expert
    with pytest.raises(McrouteError, match="'num_experts_per_tok'") as e:
        load_model(d)
    assert str(d / "config.json") in str(e.value)
    with pytest.raises(McrouteError, match="cannot read HF config"):
        load_model(tmp_path / "absent.json")
    with pytest.raises(McrouteError, match="a hardware card is a .toml file"):
        load_hardware(d / "config.json")
    with pytest.raises(McrouteError, match="model must be a card name"):
        load_model(7)


def test_cli_throughput_and_models_accept_config_json(tmp_path, capsys):
    d = _config_dir(tmp_path, MIXTRAL_8X7B)
    args = ["--hardware", "h100", "-g", "8", "-c", "4k", "-n", "20", "-s", "1"]
    assert main(["throughput", str(d / "config.json"), *args]) == 0
    by_file = capsys.readouterr().out
    assert by_file.startswith("mixtral-8x7b-v0.1 on 8 x h100-sxm, weights bf16")
    assert main(["throughput", str(d), *args]) == 0       # the folder: the same run, same seed
    assert capsys.readouterr().out == by_file
    assert main(["models", str(d / "config.json")]) == 0
    assert "mixtral-8x7b-v0.1" in capsys.readouterr().out
    assert main(["throughput", str(tmp_path / "nothing.json"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing.json" in err
