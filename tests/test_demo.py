"""`make demo`'s code path at a tiny size: every artefact it promises, and reuse on a rerun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def run_demo(store: Path) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as `make demo`
    proc = subprocess.run([sys.executable, "-m", "jobs.demo", "--small", "--store", str(store)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


@pytest.mark.timeout(1200)
def test_demo_small_end_to_end_and_rerun_reuses(tmp_path):
    store = tmp_path / "store"
    res, out = run_demo(store)

    # 2. training: progress lines, a complete checkpoint with its grid, metrics, resolved config.
    assert "step 20/20" in out and "2 worker(s)" in out
    ckpt = Path(res["checkpoint"])
    assert (ckpt / "model.json").is_file() and (ckpt / "generator_ema.safetensors").is_file()
    assert Image.open(res["grid"]).size[0] > 16
    run = Path(res["run"])
    assert (run / "config.yaml").is_file()
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 20

    # 3. a balanced set of Parquet shards with its manifest.
    manifest = json.loads((Path(res["set"]) / "_manifest.json").read_text())
    assert manifest["rows"] == res["rows"] == 400
    counts = {int(k): v for k, v in manifest["counts"].items()}
    assert sum(counts.values()) == 400 and max(counts.values()) - min(counts.values()) <= 20
    table = pq.read_table(Path(res["set"]), columns=["label", "seed"])
    assert table.num_rows == 400

    # 4. the evaluation report with CAS, domain FID and the k = 10 gain arms.
    report_dir = Path(res["report"]).parent
    report = json.loads((report_dir / "report.json").read_text())
    assert {"cas", "fid", "gain"} <= set(report["metrics"])
    assert 0.0 <= res["cas"] <= 1.0 and res["fid_domain"] >= 0
    assert res["gain"]["k"] == 10 and set(res["gain"]["arms"]) == {"real", "real+classic", "real+gan", "real+classic+gan"}
    assert (report_dir / "report.md").read_text().strip()
    for png in report_dir.glob("*.png"):
        Image.open(png).verify()

    # 5. served over HTTP through the client, byte-identical to the Sampler.
    assert res["serve"]["identical_to_sampler"] is True and res["serve"]["images"] == 4
    assert res["serve"]["url"].startswith("http://127.0.0.1:")

    # 6. the summary table names the artefacts.
    assert "== summary" in out and res["report"] in out and res["set"] in out

    # A second run reuses the finished run, the complete set and the unchanged report.
    again, out2 = run_demo(store)
    assert "nothing to do" in out2 and "reusing" in out2
    assert again["checkpoint"] == res["checkpoint"] and again["cas"] == res["cas"]
    assert json.loads((Path(res["set"]) / "_manifest.json").read_text())["files"] == manifest["files"]
