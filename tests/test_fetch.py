"""``wsss data fetch`` (wsss_core.data.fetch), offline: a local HTTP server in a thread serves a tiny
VOC-layout archive. Checksum match (extracted, readable by the VOC reader), mismatch (nothing left),
a download cut half-way then resumed with a Range request, a server without Range support, offline
(one line naming the URL and where to put the file; a file put there by hand is used), unknown
checksums, SBD's masks → SegmentationClassAug + train_aug, the CLI's --list and MSRC refusal."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from wsss_core.cli import main as cli
from wsss_core.data import fetch as F
from wsss_core.data.palette import read_label_png, voc_palette


# --------------------------------------------------------------------------------------------------
# a tiny server: files by path, optional Range support, optionally cuts its next reply half-way
# --------------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        st = self.server.state
        rng = self.headers.get("Range")
        st["requests"].append(rng)
        body = st["files"].get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng and st["ranges"]:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        data = body[start:]
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if st["cut"]:  # promise everything, send half, hang up
            st["cut"] = False
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.state = {"files": {}, "ranges": True, "cut": False, "requests": []}
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _voc_tar() -> bytes:
    """A VOC 2012-like trainval tar: 3 images (2 train, 1 val) with masks, ~10 kB."""
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buf, mode="w") as t:
        def add(name, data: bytes):
            info = tarfile.TarInfo(f"VOCdevkit/VOC2012/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))

        for i, ident in enumerate(["2007_000001", "2007_000002", "2007_000003"]):
            im = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(im, "JPEG")
            add(f"JPEGImages/{ident}.jpg", im.getvalue())
            lab = np.zeros((24, 32), np.uint8)
            lab[4:12, 4:20] = i + 1
            lab[0, :] = 255
            png = io.BytesIO()
            im = Image.fromarray(lab, mode="P")
            im.putpalette(voc_palette().reshape(-1).tolist())
            im.save(png, "PNG")
            add(f"SegmentationClass/{ident}.png", png.getvalue())
        add("ImageSets/Segmentation/train.txt", b"2007_000001\n2007_000002\n")
        add("ImageSets/Segmentation/val.txt", b"2007_000003\n")
    return buf.getvalue()


TAR = _voc_tar()
SHA = hashlib.sha256(TAR).hexdigest()


def _registry(url: str, **archive_kw) -> dict:
    spec = F.REGISTRY["voc2012"]
    kw = dict(url=f"{url}/VOCtrainval_11-May-2012.tar", size=len(TAR), sha256=SHA, md5=None)
    kw.update(archive_kw)
    return {"voc2012": replace(spec, archives=(replace(spec.archives[0], **kw),))}


def _quiet(*a):
    pass


def _leftovers(data: Path) -> list[str]:
    """Anything half-done: partial downloads, staging folders."""
    return sorted(p.name for p in data.rglob("*") if p.name.endswith(".part") or ".fetch-" in p.name)


def test_checksum_match_extracts_a_tree_the_reader_reads(server, tmp_path):
    from wsss_core.data.voc import VOCLayoutDataset

    server.state["files"]["/VOCtrainval_11-May-2012.tar"] = TAR
    target = F.fetch("voc2012", tmp_path, registry=_registry(server.url), progress=False, log=_quiet)
    assert target == tmp_path / "VOCdevkit" / "VOC2012"
    assert (target / ".wsss-fetched-voc2012").is_file()
    assert (tmp_path / "downloads" / "VOCtrainval_11-May-2012.tar").read_bytes() == TAR
    assert _leftovers(tmp_path) == []
    ds = VOCLayoutDataset(tmp_path, "train")  # the reader finds VOCdevkit/VOC2012 itself
    assert len(ds) == 2 and ds[1]["mask"].max() == 255 and 2 in np.unique(np.asarray(ds[1]["mask"]))
    # a second fetch does nothing: no request
    n = len(server.state["requests"])
    F.fetch("voc2012", tmp_path, registry=_registry(server.url), progress=False, log=_quiet)
    assert len(server.state["requests"]) == n


def test_checksum_mismatch_leaves_nothing_half_done(server, tmp_path):
    server.state["files"]["/VOCtrainval_11-May-2012.tar"] = TAR
    with pytest.raises(F.FetchError, match="does not match") as e:
        F.fetch("voc2012", tmp_path, registry=_registry(server.url, sha256="0" * 64), progress=False, log=_quiet)
    assert "\n" not in str(e.value) and "nothing was extracted" in str(e.value)
    assert not (tmp_path / "downloads" / "VOCtrainval_11-May-2012.tar").exists()
    assert not (tmp_path / "VOCdevkit").exists() and _leftovers(tmp_path) == []


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    server.state["files"]["/VOCtrainval_11-May-2012.tar"] = TAR
    server.state["cut"] = True
    reg = _registry(server.url)
    with pytest.raises(F.FetchError) as e:
        F.fetch("voc2012", tmp_path, registry=reg, progress=False, log=_quiet)
    msg = str(e.value)
    part = tmp_path / "downloads" / "VOCtrainval_11-May-2012.tar.part"
    assert "\n" not in msg and f"{server.url}/VOCtrainval_11-May-2012.tar" in msg and str(part)[:-5] in msg
    assert part.stat().st_size == len(TAR) // 2 and not (tmp_path / "VOCdevkit").exists()
    F.fetch("voc2012", tmp_path, registry=reg, progress=False, log=_quiet)
    assert server.state["requests"] == [None, f"bytes={len(TAR) // 2}-"]
    assert (tmp_path / "downloads" / "VOCtrainval_11-May-2012.tar").read_bytes() == TAR
    assert (tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000003.jpg").is_file()
    assert _leftovers(tmp_path) == []


def test_server_without_range_support_starts_again(server, tmp_path):
    server.state["files"]["/VOCtrainval_11-May-2012.tar"] = TAR
    server.state["ranges"] = False
    part = tmp_path / "downloads" / "VOCtrainval_11-May-2012.tar.part"
    part.parent.mkdir()
    part.write_bytes(b"garbage from an older try")
    F.fetch("voc2012", tmp_path, registry=_registry(server.url), progress=False, log=_quiet)
    assert (tmp_path / "downloads" / "VOCtrainval_11-May-2012.tar").read_bytes() == TAR


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def test_offline_fails_in_one_line_and_a_file_put_by_hand_is_used(tmp_path):
    url = _closed_port_url()
    reg = _registry(url)
    with pytest.raises(F.FetchError) as e:
        F.fetch("voc2012", tmp_path, registry=reg, progress=False, log=_quiet)
    dest = tmp_path / "downloads" / "VOCtrainval_11-May-2012.tar"
    msg = str(e.value)
    assert "\n" not in msg and f"{url}/VOCtrainval_11-May-2012.tar" in msg and f"put it at {dest}" in msg
    dest.write_bytes(TAR)  # downloaded elsewhere, put there by hand
    target = F.fetch("voc2012", tmp_path, registry=reg, progress=False, log=_quiet)
    assert (target / "ImageSets" / "Segmentation" / "val.txt").read_text() == "2007_000003\n"


def test_a_wrong_file_put_by_hand_is_reported_and_kept(tmp_path):
    dest = tmp_path / "downloads" / "VOCtrainval_11-May-2012.tar"
    dest.parent.mkdir()
    dest.write_bytes(TAR[:-1])
    with pytest.raises(F.FetchError, match="delete the file"):
        F.fetch("voc2012", tmp_path, registry=_registry(_closed_port_url()), progress=False, log=_quiet)
    assert dest.exists() and not (tmp_path / "VOCdevkit").exists()


def test_unknown_checksum_prints_the_hash_and_needs_trust(server, tmp_path):
    server.state["files"]["/VOCtrainval_11-May-2012.tar"] = TAR
    reg = _registry(server.url, sha256=None, md5=None)
    said = []
    with pytest.raises(F.FetchError, match="--trust-unknown-checksum"):
        F.fetch("voc2012", tmp_path, registry=reg, progress=False, log=said.append)
    assert any(SHA in s for s in said) and not (tmp_path / "VOCdevkit").exists()
    F.fetch("voc2012", tmp_path, registry=reg, progress=False, log=_quiet, trust_unknown=True)
    assert (tmp_path / "VOCdevkit" / "VOC2012" / ".wsss-fetched-voc2012").is_file()


def test_md5_is_checked_where_no_sha256_is_published(server, tmp_path):
    server.state["files"]["/VOCtrainval_11-May-2012.tar"] = TAR
    bad = _registry(server.url, sha256=None, md5="0" * 32)
    with pytest.raises(F.FetchError, match="MD5 does not match"):
        F.fetch("voc2012", tmp_path, registry=bad, progress=False, log=_quiet)
    good = _registry(server.url, sha256=None, md5=hashlib.md5(TAR).hexdigest())
    F.fetch("voc2012", tmp_path, registry=good, progress=False, log=_quiet)


def _sbd_tgz() -> bytes:
    """SBD's benchmark.tgz in miniature: cls/<id>.mat (GTcls.Segmentation) for 2 ids, train/val lists."""
    from scipy.io import savemat

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        def add(name, data: bytes):
            info = tarfile.TarInfo(f"benchmark_RELEASE/dataset/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))

        for ident, c in [("2007_000002", 7), ("2008_000009", 15)]:  # one shared with VOC, one SBD-only
            seg = np.zeros((24, 32), np.uint8)
            seg[2:10, 3:9] = c
            m = io.BytesIO()
            savemat(m, {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((1,), object),
                                  "CategoriesPresent": np.array([c], np.uint8)}})
            add(f"cls/{ident}.mat", m.getvalue())
        add("train.txt", b"2008_000009\n")
        add("val.txt", b"2007_000002\n2007_000003\n")  # 2007_000003 is VOC val: never in train_aug
    return buf.getvalue()


def test_sbd_becomes_segmentationclassaug_and_train_aug(server, tmp_path):
    server.state["files"]["/VOCtrainval_11-May-2012.tar"] = TAR
    tgz = _sbd_tgz()
    server.state["files"]["/benchmark.tgz"] = tgz
    reg = _registry(server.url)
    sbd = F.REGISTRY["sbd"]
    reg["sbd"] = replace(sbd, archives=(replace(sbd.archives[0], url=f"{server.url}/benchmark.tgz",
                                                md5=hashlib.md5(tgz).hexdigest()),))
    with pytest.raises(F.FetchError, match="fetch voc2012"):
        F.fetch("sbd", tmp_path, registry=reg, progress=False, log=_quiet)
    F.fetch("voc2012", tmp_path, registry=reg, progress=False, log=_quiet)
    root = F.fetch("sbd", tmp_path, registry=reg, progress=False, log=_quiet)
    aug = root / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == ["2007_000001", "2007_000002", "2007_000003", "2008_000009"]
    assert set(np.unique(read_label_png(aug / "2008_000009.png"))) == {0, 15}
    assert set(np.unique(read_label_png(aug / "2007_000002.png"))) == {0, 7}  # SBD's mask where SBD has one
    assert (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split() == \
        ["2007_000001", "2007_000002", "2008_000009"]
    assert _leftovers(tmp_path) == []


def test_cli_list_and_msrc_refusal(capsys):
    assert cli(["data", "fetch", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("voc2012", "sbd", "msrc-v2", "VOCtrainval_11-May-2012.tar", F.REGISTRY["voc2012"].archives[0].sha256):
        assert name in out
    assert cli(["data", "fetch", "msrc-v2"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "msrc_voc" in err and "README" in err


def test_cli_offline_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(F, "REGISTRY", _registry(_closed_port_url()))
    assert cli(["data", "fetch", "voc2012", "--data-root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot download" in err[0] and "put it at" in err[0]
