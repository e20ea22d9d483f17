"""The per-image predictions CSV of an evaluation, against the model run by hand on the same images."""
import csv
import json
import os

import pytest
import torch
from conftest import make_trainer

from raccnn.data.build import build_dataset, prepare_data
from raccnn.data.device_input import model_normalization, to_model_input
from raccnn.engine.inference import load_trained_model, predictions_name, run_evaluation


def test_predictions_file_is_named_after_the_metrics_file():
    assert predictions_name("run/best.pt", "test") == "predictions.csv"
    assert predictions_name("run/best.pt", "val") == "predictions_val.csv"
    assert predictions_name("run/best_alternate.pt", "test") == "predictions_best_alternate.csv"
    assert predictions_name("run/last.pt", "val") == "predictions_last_val.csv"


def test_predictions_csv_holds_the_models_outputs_and_the_metrics_accuracies(data_root, tmp_path):
    make_trainer(data_root, tmp_path).run()
    checkpoint = tmp_path / "best.pt"
    metrics, table = run_evaluation(checkpoint, "test", device="cpu")
    assert metrics["predictions"] == str(tmp_path / "predictions.csv")
    assert json.loads((tmp_path / "metrics.json").read_text())["top5_acc_scale2"] == metrics["top5_acc_scale2"]
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))

    model, ckpt = load_trained_model(checkpoint, "cpu")
    cfg = ckpt["config"]
    dataset = build_dataset(cfg, "test", prepare_data(cfg))
    assert len(rows) == len(dataset) == metrics["num_images"]
    heads = metrics["heads"]
    assert heads == ["scale1", "scale2", "scale3", "fused12", "fused123"]
    assert list(rows[0]) == (["image", "label", "label_name"]
                             + [f"{h}_{c}" for h in heads for c in ("pred", "pred_name", "prob", "prob_label")]
                             + [f"scale{s}_{c}" for s in (2, 3) for c in ("tx", "ty", "tl")])

    with torch.no_grad():
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])  # uint8, as the workers hand it over
        out = model(to_model_input(images, "cpu", model_normalization(model)))
    logits = dict(zip(heads, [*out.logits, *out.fused.values()]))
    labels = [int(dataset[i]["label"]) for i in range(len(dataset))]
    for i, row in enumerate(rows):
        # the image's file, relative to data.root, in dataset order
        assert not os.path.isabs(row["image"])
        assert os.path.samefile(os.path.join(data_root, row["image"]), dataset.annotation(i)["path"])
        assert (int(row["label"]), row["label_name"]) == (labels[i], dataset.classes[labels[i]])
        for head in heads:
            probs = logits[head][i].softmax(0)
            pred = int(probs.argmax())
            assert (int(row[f"{head}_pred"]), row[f"{head}_pred_name"]) == (pred, dataset.classes[pred])
            assert float(row[f"{head}_prob"]) == pytest.approx(float(probs[pred]), abs=1e-5)
            assert float(row[f"{head}_prob_label"]) == pytest.approx(float(probs[labels[i]]), abs=1e-5)
        for s, box in zip((2, 3), out.abs_boxes):
            assert [float(row[f"scale{s}_{c}"]) for c in ("tx", "ty", "tl")] == pytest.approx(box[i].tolist(), abs=1e-6)

    # the metrics are the file's rows counted
    for head in heads:
        right = [int(r[f"{head}_pred"]) == int(r["label"]) for r in rows]
        assert metrics[f"acc_{head}"] == pytest.approx(sum(right) / len(rows))
        per_class = [sum(ok for ok, r in zip(right, rows) if r["label"] == str(k))
                     / sum(r["label"] == str(k) for r in rows) for k in range(len(dataset.classes))]
        assert metrics[f"mean_class_acc_{head}"] == pytest.approx(sum(per_class) / len(per_class))
        assert metrics[f"top5_acc_{head}"] == 1.0  # 3 classes
    assert f"| scale 2 | {100 * metrics['acc_scale2']:.2f} | 100.00 |" in table
