"""l2r report / predict --evaluate --report: one self-contained HTML page built from a tiny run."""

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from l2r_submit.core import disp_files
from l2r_submit.cli import main
from l2r_submit.core.contract import LABEL_NAMES
from l2r_submit.training.synthetic import smooth_random_disp

from conftest import TINY_SHAPE


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


class Page(HTMLParser):
    """Every start tag with its attributes, the text, and the nesting checked (void tags aside)."""

    VOID = {"meta", "img", "br", "line", "rect", "circle"}

    def __init__(self, text):
        super().__init__()
        self.tags, self.stack, self.text, self.rows = [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append(dict(attrs).get("class", ""))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag not in self.VOID:
            assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_predict_evaluate_report_from_a_tiny_run(tiny_dataset, tiny_ckpt, tmp_path):
    bad = tiny_dataset.parent / "imagesTr" / "AbdomenCTCT_0003_0000.nii.gz"  # its two pairs fail, zero-filled
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.int16), np.eye(4)), bad)
    out, qc = tmp_path / "out", tmp_path / "qc"
    res = invoke("predict", tiny_dataset, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu", "--quiet",
                 "--io-iters", "0", "--qc", qc, "--evaluate", "--report")
    assert res.exit_code == 1 and f"wrote {out / 'report.html'}" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    text = (out / "report.html").read_text()
    page = Page(text)
    assert not page.stack  # every element closed
    # self-contained: no URL anywhere, no external script, style or image
    assert "http" not in text and "<link" not in text
    sources = [a["src"] for _, a in page.tags if "src" in a]
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert not any(t == "script" and "src" in a for t, a in page.tags)
    # the aggregate table under the official names, with the numbers of metrics.json
    agg = text[text.index("<table class='agg'>"):text.index("</table>")]
    for name in ("DSC", "HD95", "LogJacDetStd"):
        row = re.search(rf"<tr><th>{name}</th>(.*?)</tr>", agg).group(1)
        values = re.findall(r"<td>([^<]*)</td>", row)[:3]
        assert values == [f"{metrics['aggregates'][name][k]:.4f}" for k in ("mean", "std", "30")]
    assert "<th>mean</th><th>std</th><th>30</th>" in agg
    # per-organ box plots of Dice and HD95, the organs named
    assert text.count("<svg") == 2
    for label in (1, 13):
        assert f">{LABEL_NAMES[label]}</text>" in text
    # per-pair table: one row per pair, the two failed predictions flagged as zero-filled, sortable
    assert sorted(page.rows[-3:]) == ["", "zero", "zero"]
    assert metrics["zero_filled"] == ["0001_0000<--0003_0000", "0002_0000<--0003_0000"]
    assert text.count("onclick='sortBy(this)'") >= 5 and "function sortBy" in text
    # the QC picture of the pair that was made, inline, byte for byte; a note for the others
    png = (qc / "qc_0001_0002.png").read_bytes()
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in text
    assert "0001_0000&lt;--0003_0000: no QC picture" in text


def test_report_flags_a_failed_pair_and_opens_with_no_qc(tiny_dataset, tmp_path):
    disp_dir = tmp_path / "disp"
    for n, (f, m) in enumerate([("0001", "0002"), ("0001", "0003"), ("0002", "0003")]):
        disp_files.write_disp(smooth_random_disp(n, TINY_SHAPE, 2.0), disp_dir, f, m)
    (disp_dir / "disp_0002_0000_0003_0000.nii.gz").write_bytes(b"\x1f\x8b broken")
    assert invoke("evaluate", tiny_dataset, disp_dir, "--out", tmp_path / "m.json", "--quiet").exit_code == 1
    res = invoke("report", tmp_path / "m.json", "--out", tmp_path / "r.html")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "r.html").read_text()
    page = Page(text)
    assert page.rows.count("failed") == 1 and "FAILED: " in text and "corrupt gzip stream" in text
    assert "Partial result" in text and "<img" not in text


@pytest.mark.parametrize("case", ["missing", "not json", "no cases", "qc missing", "out is folder",
                                  "case value a string", "failed a list", "aggregate a number"])
def test_report_bad_input_is_one_line_exit_2(tmp_path, case):
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"aggregates": {}, "cases": {}}))
    args = [metrics, "--out", tmp_path / "r.html"]
    if case == "missing":
        args[0] = tmp_path / "nope.json"
    elif case == "not json":
        metrics.write_text("{not json")
    elif case == "no cases":
        metrics.write_text(json.dumps({"aggregates": {}}))
    elif case == "qc missing":
        args += ["--qc", tmp_path / "noqc"]
    elif case == "case value a string":  # these three were tracebacks (AttributeError), exit 1
        metrics.write_text(json.dumps({"aggregates": {}, "cases": {"a": {"DSC": "0.5"}}}))
    elif case == "failed a list":
        metrics.write_text(json.dumps({"aggregates": {}, "cases": {}, "failed": ["a"]}))
    elif case == "aggregate a number":
        metrics.write_text(json.dumps({"aggregates": {"DSC": 0.5}, "cases": {}}))
    else:
        args[2] = tmp_path
    res = CliRunner().invoke(main, ["report", *map(str, args)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and res.output.startswith("error: ")
    assert not (tmp_path / "r.html").exists()


def test_report_needs_evaluate():
    res = CliRunner().invoke(main, ["predict", "x.json", "--out", "o", "--report"])
    assert res.exit_code == 2 and "--report needs --evaluate" in res.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium not installed (scripts/report_screenshot.sh)")
def test_report_renders_in_headless_chromium(tiny_dataset, tmp_path, repo_root):
    disp_dir = tmp_path / "disp"
    for n, (f, m) in enumerate([("0001", "0002"), ("0001", "0003"), ("0002", "0003")]):
        disp_files.write_disp(smooth_random_disp(n, TINY_SHAPE, 2.0), disp_dir, f, m)
    assert invoke("evaluate", tiny_dataset, disp_dir, "--out", tmp_path / "m.json", "--quiet").exit_code == 0
    assert invoke("report", tmp_path / "m.json", "--out", tmp_path / "r.html").exit_code == 0
    shot = tmp_path / "shot.png"
    subprocess.run(["bash", str(repo_root / "scripts" / "report_screenshot.sh"), str(tmp_path / "r.html"), str(shot)],
                   check=True, timeout=120, capture_output=True)
    with open(shot, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a drawn page, not a blank one
