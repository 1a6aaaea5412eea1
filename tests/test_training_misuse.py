"""Misuse of train.py, evaluate.py, run_protocol.py and mpiqe-export, as a new user might: each gets one line naming
the input and the way out, with exit status 2 (usage) or 130 (Ctrl-C), no traceback, and nothing already written
in the output folder changes."""

import csv
import hashlib
import json
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MPIQEModelTester
from PIL import Image
from safetensors.torch import save_file
from test_train import _load_script, train_script

from mpiqe_hf.cli.export import main as export_main
from mpiqe_hf.training import run_script


evaluate_script = _load_script("evaluate")
protocol_script = _load_script("run_protocol")
# Each takes the argv and returns the exit status, as the command would.
SCRIPTS = {
    name: partial(run_script, module.main, prog="script")
    for name, module in (("train", train_script), ("evaluate", evaluate_script), ("run_protocol", protocol_script))
}
SCRIPTS["export"] = export_main


def write_folder(folder, rows, header=("file_name", "mos"), images=4, raw=None):
    """A folder with `images` small PNGs (img0.png, ...) and a metadata.csv of `header` and `rows` (or the bytes
    `raw`)."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(images):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(folder / f"img{k}.png")
    if raw is not None:
        (folder / "metadata.csv").write_bytes(raw)
        return str(folder)
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(folder)


def good_rows(n=4):
    return [[f"img{k}.png", f"{1.0 + k:.1f}"] for k in range(n)]


@pytest.fixture(scope="module")
def ws(tiny_clip, tmp_path_factory):
    """The places the cases name: `{clip}`, `{out}` (a folder holding one earlier file), data folders, models and
    checkpoints."""
    root = tmp_path_factory.mktemp("misuse")
    places = {"clip": tiny_clip, "root": str(root), "out": str(root / "out")}
    (root / "a_file.txt").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "dangling").symlink_to(root / "nowhere_target")
    (root / "looping").symlink_to(root / "looping")
    places["good"] = write_folder(root / "good", good_rows(20), images=20)
    places["header_only"] = write_folder(root / "header_only", [])
    places["wrong_columns"] = write_folder(root / "wrong_columns", good_rows(), header=("image", "score"))
    places["nan_mos"] = write_folder(root / "nan_mos", good_rows(3) + [["img3.png", "nan"]])
    places["negative_mos"] = write_folder(root / "negative_mos", good_rows(19) + [["img19.png", "-2"]], images=20)
    places["duplicates"] = write_folder(root / "duplicates", good_rows(4) + [["img1.png", "2.0"]])
    text = "file_name,mos\nimg0.png,1.0\nimg1.png,2.0\nimg2.png,3.0\nimg3.png,4.0 caf\xe9\n"
    places["latin1"] = write_folder(root / "latin1", [], raw=text.encode("latin-1"))
    places["missing_image"] = write_folder(root / "missing_image", good_rows(3) + [["gone.png", "3.5"]])

    # A model folder without training_args.json (as downloaded from the Hub), one with a broken one, a folder that
    # holds no model, and a CLIP (a model, but not MP-IQE).
    bare = root / "bare_model"
    MPIQEModelTester().model(mos_min=1.0, mos_max=5.0).save_pretrained(bare)
    places["bare_model"] = str(bare)
    broken = root / "broken_args_model"
    MPIQEModelTester().model().save_pretrained(broken)
    (broken / "training_args.json").write_text("{not json")
    places["broken_args_model"] = str(broken)
    (root / "no_model" / "notes").mkdir(parents=True)
    places["no_model"] = str(root / "no_model")

    # Checkpoints: no training state, an unreadable state, unreadable weights, and weights of another config.
    state = {"completed_steps": 1, "epoch": 0, "batches_in_epoch": 1, "best": {}, "history": []}
    (root / "garbage_ckpt").mkdir()
    (root / "garbage_ckpt" / "model.safetensors").write_bytes(b"\x00garbage")
    (root / "bad_state_ckpt").mkdir()
    (root / "bad_state_ckpt" / "training_state.json").write_text('{"epoch": 0}')
    (root / "no_weights_ckpt").mkdir()
    (root / "no_weights_ckpt" / "training_state.json").write_text(json.dumps(state))
    (root / "bad_weights_ckpt").mkdir()
    (root / "bad_weights_ckpt" / "training_state.json").write_text(json.dumps(state))
    (root / "bad_weights_ckpt" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    other = root / "other_config_ckpt"
    other.mkdir()
    (other / "training_state.json").write_text(json.dumps(state))
    model_args = train_script.ModelArguments(
        clip_model_name_or_path=tiny_clip, config_overrides="decoder_intermediate_size=32"
    )
    mos_range = type("MOSRange", (), {"mos_min": 1.0, "mos_max": 5.0, "higher_is_better": True})
    model = train_script.build_model(model_args, mos_range, 0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(other / "model.safetensors"))
    # A run's output folder, as train.py records it, trained with 8 crops of batches of 8.
    (root / "ckrun").mkdir()
    recorded = {}
    for arguments in train_script.parse_args([arg.format(**places) for arg in [*RUN, "--train_dir", "{good}"]]):
        recorded.update(asdict(arguments))
    recorded.update(num_crops=8, per_device_train_batch_size=8, dataloader_num_workers=4)
    (root / "ckrun" / "training_args.json").write_text(json.dumps(recorded, default=str))
    for name in (
        "ckrun",
        "garbage_ckpt",
        "bad_state_ckpt",
        "no_weights_ckpt",
        "bad_weights_ckpt",
        "other_config_ckpt",
    ):
        places[name] = str(root / name)
    return places


TRAIN = ["--clip_model_name_or_path", "{clip}", "--output_dir", "{out}", "--dataloader_num_workers", "0"]
# A run that would start training: only the options under test make it fail.
# (Without --overwrite_output_dir: a run that, with the refusal of a non-empty --output_dir broken, trains one step.)
SHORT = [*TRAIN, "--max_train_steps", "1", "--per_device_train_batch_size", "2", "--num_crops", "1"]
SHORT += ["--config_overrides", "decoder_intermediate_size=64", "--no_verify_images", "--train_dir", "{good}"]
RUN = [*SHORT[: SHORT.index("--train_dir")], "--overwrite_output_dir"]
EVAL = ["--output_dir", "{out}", "--dataloader_num_workers", "0", "--num_crops", "1"]

# (case id, script, argv, exit status, fragments of the message); {name} is a place of `ws`.
CASES = [
    # train.py: the output folder
    ("out_not_empty", "train", SHORT, 2, ["{out} is not empty", "--overwrite_output_dir", "--resume_from_checkpoint"]),
    ("out_is_file", "train", [*TRAIN, "--output_dir", "{root}/a_file.txt"], 2, ["a_file.txt is a file"]),
    ("out_empty_string", "train", [*TRAIN, "--output_dir", ""], 2, ["--output_dir must name a folder"]),
    (
        "out_dangling_link",
        "train",
        [*RUN, "--train_dir", "{good}", "--output_dir", "{root}/dangling"],
        2,
        ["--output_dir {root}/dangling is a symbolic link to", "does not exist or loops back"],
    ),
    (
        "out_looping_link",
        "train",
        [*RUN, "--train_dir", "{good}", "--output_dir", "{root}/looping"],
        2,
        ["--output_dir {root}/looping is a symbolic link", "does not exist or loops back"],
    ),
    (
        "out_is_train_dir",
        "train",
        [*RUN, "--train_dir", "{out}"],
        2,
        ["--output_dir {out} is --train_dir {out}", "choose another --output_dir"],
    ),
    (
        "out_inside_model",
        "train",
        [*RUN, "--train_dir", "{good}", "--model_name_or_path", "{out}", "--output_dir", "{out}/run"],
        2,
        ["--output_dir {out}/run lies inside --model_name_or_path {out}", "choose another --output_dir"],
    ),
    # train.py: numbers
    ("num_crops_0", "train", [*TRAIN, "--num_crops", "0"], 2, ["--num_crops must be a finite number at least 1"]),
    ("num_crops_negative", "train", [*TRAIN, "--num_crops", "-3"], 2, ["--num_crops must be", "got -3"]),
    ("num_crops_text", "train", [*TRAIN, "--num_crops", "many"], 2, ["--num_crops", "invalid int value"]),
    ("eval_num_crops_0", "train", [*TRAIN, "--eval_num_crops", "0"], 2, ["--eval_num_crops must be"]),
    ("train_batch_0", "train", [*TRAIN, "--per_device_train_batch_size", "0"], 2, ["--per_device_train_batch_size"]),
    ("eval_batch_neg", "train", [*TRAIN, "--per_device_eval_batch_size", "-1"], 2, ["--per_device_eval_batch_size"]),
    ("epochs_0", "train", [*TRAIN, "--num_train_epochs", "0"], 2, ["--num_train_epochs must be"]),
    ("max_steps_neg", "train", [*TRAIN, "--max_train_steps", "-5"], 2, ["--max_train_steps must be"]),
    ("lr_nan", "train", [*TRAIN, "--learning_rate", "nan"], 2, ["--learning_rate must be a finite number at least 0"]),
    ("lr_inf", "train", [*TRAIN, "--learning_rate", "inf"], 2, ["--learning_rate must be", "got inf"]),
    ("lr_negative", "train", [*TRAIN, "--learning_rate=-1e-3"], 2, ["--learning_rate must be"]),
    ("weight_decay_nan", "train", [*TRAIN, "--weight_decay", "nan"], 2, ["--weight_decay must be"]),
    ("accumulation_0", "train", [*TRAIN, "--gradient_accumulation_steps", "0"], 2, ["--gradient_accumulation_steps"]),
    ("warmup_steps_neg", "train", [*TRAIN, "--num_warmup_steps", "-1"], 2, ["--num_warmup_steps must be"]),
    ("warmup_epochs_nan", "train", [*TRAIN, "--num_warmup_epochs", "nan"], 2, ["--num_warmup_epochs must be"]),
    ("grad_norm_0", "train", [*TRAIN, "--max_grad_norm", "0"], 2, ["--max_grad_norm must be"]),
    ("eval_every_0", "train", [*TRAIN, "--eval_every_epoch", "0"], 2, ["--eval_every_epoch must be"]),
    ("loss_weight_nan", "train", [*TRAIN, "--score_loss_weight", "nan"], 2, ["--score_loss_weight must be"]),
    ("split_index_11", "train", [*TRAIN, "--split_index", "11"], 2, ["--split_index must be in 1..10"]),
    ("train_fraction_nan", "train", [*TRAIN, "--train_fraction", "nan"], 2, ["--train_fraction must be in (0, 1]"]),
    ("mos_range_reversed", "train", [*TRAIN, "--mos_range", "5", "1"], 2, ["--mos_range takes two finite numbers"]),
    ("mos_range_nan", "train", [*TRAIN, "--mos_range", "nan", "5"], 2, ["--mos_range takes two finite numbers"]),
    ("max_train_samples_0", "train", [*TRAIN, "--max_train_samples", "0"], 2, ["--max_train_samples must be"]),
    ("workers_negative", "train", [*TRAIN, "--dataloader_num_workers", "-1"], 2, ["--dataloader_num_workers must"]),
    ("checkpointing_text", "train", [*TRAIN, "--checkpointing_steps", "often"], 2, ["--checkpointing_steps must be"]),
    ("unknown_option", "train", [*TRAIN, "--epochs", "4"], 2, ["--epochs"]),
    ("both_data_sources", "train", [*TRAIN, "--train_dir", "{good}", "--dataset_name", "live"], 2, ["not both"]),
    # train.py: checkpoints to resume from
    ("resume_no_folder", "train", [*TRAIN, "--resume_from_checkpoint", "{root}/nowhere"], 2, ["no such folder"]),
    ("resume_latest_none", "train", [*TRAIN, "--resume_from_checkpoint", "latest"], 2, ["no checkpoint", "{out}"]),
    (
        "resume_garbage_folder",
        "train",
        [*TRAIN, "--resume_from_checkpoint", "{garbage_ckpt}"],
        2,
        ["garbage_ckpt: not a checkpoint of this script (no training_state.json)"],
    ),
    (
        "resume_bad_state",
        "train",
        [*TRAIN, "--resume_from_checkpoint", "{bad_state_ckpt}"],
        2,
        ["training_state.json: not a training state written by train.py", "completed_steps"],
    ),
    (
        "resume_no_weights",
        "train",
        [*TRAIN, "--resume_from_checkpoint", "{no_weights_ckpt}"],
        2,
        ["no_weights_ckpt has no model weights (model.safetensors)"],
    ),
    (
        "resume_bad_weights",
        "train",
        [*TRAIN, "--resume_from_checkpoint", "{bad_weights_ckpt}"],
        2,
        ["model.safetensors: not a readable safetensors file", "--overwrite_output_dir"],
    ),
    (
        "resume_other_config",
        "train",
        [*RUN, "--train_dir", "{good}", "--resume_from_checkpoint", "{other_config_ckpt}"],
        2,
        ["other_config_ckpt: cannot be loaded into this run", "size mismatch for", "with other options"],
    ),
    (
        "resume_other_settings",
        "train",
        [*RUN, "--train_dir", "{good}", "--output_dir", "{ckrun}", "--resume_from_checkpoint", "{other_config_ckpt}"],
        2,
        [
            "the run in {ckrun} was trained with other options",
            "--num_crops 8 there, 1 now; --per_device_train_batch_size 8 there, 2 now)",
            "--overwrite_output_dir or another --output_dir",
        ],
    ),
    # train.py: the model
    ("overrides_unknown", "train", [*RUN, "--config_overrides", "no_such_field=1"], 2, ["no_such_field"]),
    ("overrides_bad_value", "train", [*RUN, "--config_overrides", "text_prompt_length=long"], 2, ["long"]),
    ("overrides_no_equals", "train", [*RUN, "--config_overrides", "text_prompt_length"], 2, ["is not field=value"]),
    ("clip_config_missing", "train", [*RUN, "--clip_config_name", "{root}/nowhere.json"], 2, ["nowhere.json"]),
    ("fine_tune_a_clip", "train", [*RUN, "--model_name_or_path", "{clip}"], 2, ["{clip}"]),
    # train.py: the data
    ("train_dir_missing", "train", [*RUN, "--train_dir", "{root}/nowhere"], 2, ["nowhere", "no such folder"]),
    ("train_dir_empty", "train", [*RUN, "--train_dir", "{root}/empty"], 2, ["empty: no metadata.csv in it"]),
    ("val_dir_missing", "train", [*RUN, "--train_dir", "{good}", "--validation_dir", "{root}/gone"], 2, ["gone"]),
    ("header_only", "train", [*RUN, "--train_dir", "{header_only}"], 2, ["header_only/metadata.csv", "no"]),
    (
        "wrong_columns",
        "train",
        [*RUN, "--train_dir", "{wrong_columns}"],
        2,
        ["metadata.csv, line 1, field 'file_name': required column missing"],
    ),
    ("nan_mos", "train", [*RUN, "--train_dir", "{nan_mos}"], 2, ["metadata.csv, line 5, field 'mos'"]),
    (
        "negative_mos",
        "train",
        [*RUN, "--train_dir", "{negative_mos}"],
        2,
        ["metadata.csv, line 21, field 'mos': negative MOS -2.0 on a non-negative scale", "--mos_range LO HI"],
    ),
    ("duplicate_rows", "train", [*RUN, "--train_dir", "{duplicates}"], 2, ["metadata.csv, line 6", "img1.png"]),
    ("non_utf8", "train", [*RUN, "--train_dir", "{latin1}"], 2, ["latin1/metadata.csv, line 5", "UTF-8"]),
    ("missing_image", "train", [*RUN, "--train_dir", "{missing_image}"], 2, ["metadata.csv, line 5", "gone.png"]),
    # evaluate.py
    (
        "eval_no_recorded_split",
        "evaluate",
        [*EVAL, "--model_name_or_path", "{bare_model}"],
        2,
        ["bare_model has no training_args.json", "--validation_dir", "--dataset_name"],
    ),
    (
        "eval_broken_training_args",
        "evaluate",
        [*EVAL, "--model_name_or_path", "{broken_args_model}"],
        2,
        ["training_args.json: not the JSON train.py writes"],
    ),
    ("eval_no_model", "evaluate", [*EVAL, "--model_name_or_path", "{no_model}"], 2, ["holds neither a model"]),
    ("eval_missing_model", "evaluate", [*EVAL, "--model_name_or_path", "{root}/gone"], 2, ["gone", "no such folder"]),
    (
        "eval_not_mpiqe",
        "evaluate",
        [*EVAL, "--model_name_or_path", "{clip}", "--validation_dir", "{good}"],
        2,
        ["not an MP-IQE model"],
    ),
    (
        "eval_val_dir_missing",
        "evaluate",
        [*EVAL, "--model_name_or_path", "{bare_model}", "--validation_dir", "{root}/gone"],
        2,
        ["--validation_dir", "gone", "no such folder"],
    ),
    (
        "eval_val_dir_empty",
        "evaluate",
        [*EVAL, "--model_name_or_path", "{bare_model}", "--validation_dir", "{root}/empty"],
        2,
        ["empty: no metadata.csv in it"],
    ),
    (
        "eval_header_only",
        "evaluate",
        [*EVAL, "--model_name_or_path", "{bare_model}", "--validation_dir", "{header_only}"],
        2,
        ["header_only/metadata.csv", "no"],
    ),
    (
        "eval_non_utf8",
        "evaluate",
        [*EVAL, "--model_name_or_path", "{bare_model}", "--validation_dir", "{latin1}"],
        2,
        ["metadata.csv, line 5", "UTF-8"],
    ),
    (
        "eval_out_is_file",
        "evaluate",
        [
            *EVAL,
            "--model_name_or_path",
            "{bare_model}",
            "--validation_dir",
            "{good}",
            "--output_dir",
            "{root}/a_file.txt",
        ],
        2,
        ["--output_dir {root}/a_file.txt is a file, not a folder"],
    ),
    ("eval_num_crops_0", "evaluate", [*EVAL, "--model_name_or_path", "x", "--num_crops", "0"], 2, ["--num_crops"]),
    (
        "eval_batch_0",
        "evaluate",
        [*EVAL, "--model_name_or_path", "x", "--per_device_eval_batch_size", "0"],
        2,
        ["--per_device_eval_batch_size must be"],
    ),
    # run_protocol.py (its argument checks only)
    ("protocol_splits_0", "run_protocol", ["--output_dir", "{out}", "--num_splits", "0"], 2, ["splits must lie"]),
    ("protocol_first_11", "run_protocol", ["--output_dir", "{out}", "--first_split", "11"], 2, ["splits must lie"]),
    (
        "protocol_seconds_nan",
        "run_protocol",
        ["--output_dir", "{out}", "--seconds_per_crop", "nan"],
        2,
        ["--seconds_per_crop must be positive"],
    ),
    ("protocol_data_dir", "run_protocol", ["--output_dir", "{out}", "--data_dir", "live"], 2, ["DATASET=PATH"]),
    (
        "protocol_data_dir_missing_dry_run",
        "run_protocol",
        ["--output_dir", "{out}", "--table", "koniq-cross", "--data_dir", "koniq10k={root}/nowhere", "--dry_run"],
        2,
        ["--data_dir koniq10k={root}/nowhere: no such folder"],
    ),
    (
        "protocol_data_dir_unknown",
        "run_protocol",
        ["--output_dir", "{out}", "--data_dir", "bogus={good}", "--dry_run"],
        2,
        ["--data_dir bogus=...: unknown dataset; known: live, csiq", "agiqa3k"],
    ),
    ("protocol_table_no_liqe", "run_protocol", ["--output_dir", "{out}", "--table", "1"], 2, ["needs --liqe_root"]),
    # mpiqe-export
    (
        "export_opset_3",
        "export",
        ["onnx", "{out}/new", "--model", "{bare_model}", "--opset", "3"],
        2,
        ["--opset 3: the export supports opsets 14 to 20"],
    ),
    (
        "export_dangling_link",
        "export",
        ["onnx", "{root}/dangling", "--model", "{bare_model}"],
        2,
        ["output_dir {root}/dangling is a symbolic link to", "does not exist or loops back"],
    ),
    (
        "export_missing_model",
        "export",
        ["onnx", "{out}/new", "--model", "{root}/nomodel"],
        2,
        ["the MP-IQE model (--model) '{root}/nomodel': no such folder"],
    ),
]


def snapshot(folder):
    """Each file's hash, and each folder: a refused run neither changes a file nor leaves an (empty) folder."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in Path(folder).rglob("*")
    }


def run_case(script, argv):
    try:
        return SCRIPTS[script](argv)
    except SystemExit as exited:  # argparse's errors
        return exited.code


@pytest.mark.parametrize(
    "script, argv, status, fragments", [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_misuse_gets_one_line_and_loses_nothing(ws, tmp_path, capsys, script, argv, status, fragments):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pytorch_model_notes.txt").write_text("an earlier run's file")
    places = {**ws, "out": str(out)}
    before = snapshot(out)
    code = run_case(script, [arg.format(**places) for arg in argv])
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment.format(**places) in message
    assert snapshot(out) == before


def test_the_ways_out_of_a_full_output_dir_are_taken(tmp_path):
    out = tmp_path / "out"
    (out / "step_2").mkdir(parents=True)
    (out / "step_2" / "training_state.json").write_text(
        json.dumps({"completed_steps": 2, "epoch": 1, "batches_in_epoch": 0})
    )
    save_file({"prompt": torch.zeros(1)}, str(out / "step_2" / "model.safetensors"))
    for options in ({"overwrite_output_dir": True}, {"resume_from_checkpoint": "latest"}):
        train_script.check_output_dir(train_script.TrainArguments(output_dir=str(out), **options))
    assert train_script.resolve_checkpoint(
        train_script.TrainArguments(output_dir=str(out), resume_from_checkpoint="latest")
    ) == (out / "step_2")
    with pytest.raises(ValueError, match="is not empty"):
        train_script.check_output_dir(train_script.TrainArguments(output_dir=str(out)))


def test_ctrl_c_and_bugs_are_one_line_and_a_traceback_with_a_report_request(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    def buggy(argv):
        raise ZeroDivisionError("division by zero")

    assert run_script(interrupted, [], prog="train.py", interrupted="interrupted: resume with X") == 130
    assert capsys.readouterr().err == "train.py: interrupted: resume with X\n"
    assert run_script(buggy, [], prog="evaluate.py") == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1].startswith("evaluate.py: this is a bug in mpiqe_hf")


def test_export_folder_holds_only_the_current_models_files(tmp_path, capsys):
    model_dir = tmp_path / "model"
    MPIQEModelTester().model(mos_min=1.0, mos_max=5.0).save_pretrained(model_dir)
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "model_int8.onnx").write_bytes(b"an earlier model's int8 graph")
    assert export_main(["onnx", str(exported), "--model", str(model_dir)]) == 0
    written = {p.name for p in exported.iterdir()}
    assert "model_int8.onnx" not in written and {"model.onnx", "config.json", "preprocessor_config.json"} <= written

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not the exporter's")
    capsys.readouterr()
    assert export_main(["onnx", str(foreign), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files an export does not write (holiday.jpg)" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]
    assert export_main(["onnx", str(foreign / "holiday.jpg"), "--model", str(model_dir)]) == 2
    assert "holiday.jpg is a file, not a folder" in capsys.readouterr().err
    assert export_main(["onnx", str(tmp_path / "new"), "--model", str(tmp_path / "nowhere")]) == 2
    assert "nowhere': no such folder" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
