"""NVDEC's minimum frame sizes, and where the loader decodes each codec and size on each device (no GPU needed:
torch.device("cuda", 0) objects are built without CUDA, and choosing touches no device)."""

from __future__ import annotations

import logging
from itertools import islice

import pytest
import torch

from videobert_ds.data import loader as loader_mod
from videobert_ds.data.decoders.dali import DaliClipDecoder, explain_gpu_decode_error
from videobert_ds.data.decoders.nvdec import NVDEC_MIN_SIZE, gpu_decodable, nvdec_min_size
from videobert_ds.data.loader import (
    build_clip_loader,
    choose_decoder,
    manifest_frame_size,
    read_shard_manifest,
    split_shards,
)
from videobert_ds.data.sampling import read_shards

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
LIMITS = {"vp9": (128, 128), "av1": (128, 128), "hevc": (144, 144), "h264": (48, 16)}


def test_nvdec_table_has_the_decoders_limits():
    for codec, least in LIMITS.items():
        assert NVDEC_MIN_SIZE[codec] == least
    # The manifest's and libavcodec's names for the same codecs.
    assert nvdec_min_size("avc") == nvdec_min_size("H264") == (48, 16)
    assert nvdec_min_size("h265") == nvdec_min_size("HEVC") == (144, 144)
    assert nvdec_min_size("libvpx-vp9") == nvdec_min_size("VP9") == (128, 128)
    assert nvdec_min_size("theora") is None


@pytest.mark.parametrize("codec", sorted(LIMITS))
def test_nvdec_decodable_exactly_from_the_minimum(codec):
    w, h = LIMITS[codec]
    assert gpu_decodable(codec, w, h)
    assert gpu_decodable(codec, w + 2, h + 2)
    assert not gpu_decodable(codec, w - 2, h)
    assert not gpu_decodable(codec, w, h - 2)
    assert not gpu_decodable(codec, w - 2, h - 2)


def test_nvdec_unknown_codec_is_not_gpu_decodable():
    assert not gpu_decodable("mjpeg", 1920, 1080)  # not in the table: never sent to NVDEC
    assert not gpu_decodable("theora", 1920, 1080)


# (device, codec, (width, height)) -> (backend, where DALI decodes) with backend="auto".
NVDEC_CASES = [
    (CUDA, "vp9", (128, 128), ("dali", "mixed")),
    (CUDA, "vp9", (112, 112), ("dali", "cpu")),  # the old default corpus: DALI's CPU decoder, then a copy
    (CUDA, "vp9", (128, 126), ("dali", "cpu")),
    (CUDA, "av1", (128, 128), ("dali", "mixed")),
    (CUDA, "av1", (112, 112), ("pyav", "cpu")),  # DALI's CPU decoder does not read AV1
    (CUDA, "hevc", (144, 144), ("dali", "mixed")),
    (CUDA, "h265", (128, 128), ("pyav", "cpu")),
    (CUDA, "h264", (48, 16), ("dali", "mixed")),
    (CUDA, "h264", (112, 112), ("dali", "mixed")),
    (CUDA, "h264", (46, 16), ("pyav", "cpu")),
    (CUDA, "avc", (48, 14), ("pyav", "cpu")),
    (CUDA, "vp8", (32, 32), ("dali", "cpu")),
    (CUDA, "mjpeg", (256, 256), ("dali", "cpu")),
    (CUDA, "vp9", None, ("dali", "mixed")),  # a manifest without a size: the start-up probe checks it
    (CPU, "vp9", (112, 112), ("dali", "cpu")),
    (CPU, "vp9", (256, 256), ("dali", "cpu")),
    (CPU, "h264", (256, 256), ("pyav", "cpu")),
    (CPU, "hevc", (256, 256), ("pyav", "cpu")),
    (CPU, "av1", (256, 256), ("pyav", "cpu")),
]


@pytest.mark.parametrize(("device", "codec", "size", "expected"), NVDEC_CASES)
def test_nvdec_backend_by_device_codec_and_size(device, codec, size, expected):
    choice = choose_decoder("auto", codec, device, size)
    assert (choice.backend, choice.dali_device) == expected


def test_nvdec_explicit_backends():
    with pytest.raises(ValueError, match=r"hevc.*128x128.*144x144"):
        choose_decoder("dali", "hevc", CUDA, (128, 128))
    with pytest.raises(ValueError, match="cannot decode h264"):
        choose_decoder("dali", "h264", CPU, (256, 256))
    assert choose_decoder("dali", "vp9", CUDA, (112, 112)) == ("dali", "cpu")
    assert choose_decoder("pyav", "vp9", CUDA, (256, 256)) == ("pyav", "cpu")


def test_nvdec_too_small_warns_once(caplog):
    loader_mod._WARNED.clear()  # once per process: forget earlier tests' warnings
    with caplog.at_level(logging.WARNING, logger="videobert_ds.data.loader"):
        for _ in range(3):
            choose_decoder("auto", "vp9", CUDA, (112, 112))
    lines = [r.getMessage() for r in caplog.records if "NVDEC" in r.getMessage()]
    assert len(lines) == 1
    assert "112x112" in lines[0] and "128x128" in lines[0] and "CPU" in lines[0]


def test_nvdec_manifest_frame_size():
    assert manifest_frame_size({"size": 112}) == (112, 112)
    assert manifest_frame_size({"size": [160, 120]}) == (160, 120)
    assert manifest_frame_size({"width": 176, "height": 144, "size": 112}) == (176, 144)
    assert manifest_frame_size({}) is None


def test_nvdec_loader_on_a_gpu_device_decodes_small_clips_on_the_cpu(prepared_shards):
    """The fixture's 32-px VP9 clips on cuda:0: DALI's CPU decoder, frames copied to the device (built, not run:
    choosing the decoder and building the loader touch no CUDA)."""
    assert read_shard_manifest(prepared_shards)["size"] == 32
    ld = build_clip_loader(prepared_shards, "train", 2, 4, device=CUDA)
    assert (ld.backend, ld.dali_device, ld.device) == ("dali", "cpu", CUDA)


def test_nvdec_probe_explains_a_missing_video_library():
    # DALI's own texts (strings in libdali_operators.so of nvidia-dali 2.x).
    for text in (
        "Failed to load libnvcuvid.so, needed by the VideoReader operator. If you are running in a Docker "
        "container, please refer to https://github.com/NVIDIA/nvidia-docker/wiki/Usage",
        "dlopen libnvcuvid.so failed!. Please install NVIDIA GPU driver",
        "Critical error in pipeline:\nError when executing Mixed operator decoders__Video encountered:\n"
        "CUDA driver API error CUDA_ERROR_NO_DEVICE (100):\nno CUDA-capable device is detected",
    ):
        msg = explain_gpu_decode_error(text)
        assert "NVIDIA_DRIVER_CAPABILITIES" in msg and "video" in msg and "\n" not in msg
    small = explain_gpu_decode_error("Video is too small in at least one dimension. Provided: 112x112")
    assert "minimum" in small and "--size" in small and "\n" not in small
    other = explain_gpu_decode_error("Critical error in pipeline:\nsomething else\nmore")
    assert "something else" in other and "\n" not in other


def test_nvdec_dali_pipeline_does_not_pin_threads(prepared_shards):
    """srun already binds the task's CPUs: DALI's decoder threads must not pin themselves (affine=False)."""
    infos = split_shards(prepared_shards, read_shard_manifest(prepared_shards), "train")
    clips = [s["webm"] for s in islice(read_shards(infos), 2)]
    feed = iter([(clips, None)] * 8)
    dec = DaliClipDecoder(feed, batch_size=2, num_frames=2, device=CPU, prefetch=1, num_threads=1)
    try:
        videos = [op for op in dec._pipe._ops if getattr(op._op, "schema_name", "").endswith("Video")]
        assert len(videos) == 1
        assert videos[0]._op._init_args["affine"] is False
        frames, _ = next(dec)
        assert frames.shape[:2] == (2, 2)
    finally:
        dec.close()
