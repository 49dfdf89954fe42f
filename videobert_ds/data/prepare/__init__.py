"""Raw videos + transcripts -> WebDataset tar shards of VideoBERT samples (the library behind videobert-prepare,
whose command line is videobert_ds/cli/prepare.py).

One sample per transcript cue (VideoBERT's segmentation), or fixed windows for videos without
a transcript, or one whole-video sample for a caption. Each video is decoded in one streaming
pass (``video_io``); every clip is encoded in memory, decoded back, then written to a split's
shard (``shards``). Under ``mpirun``/``srun`` the inputs are dealt round-robin to the ranks and
rank 0 publishes all shards with one manifest.json and report.json.

Bad input never stops the run: each skipped or degraded input, cue or field is counted by
reason in report.json.

    options.py  PrepareOptions, PrepareError        entries.py  the input manifest, sample keys
    labels.py   labels and QA carried to samples    video.py    one video -> its verified samples
    ranks.py    MPI ranks and one rank's share      corpus.py   prepare_corpus: the whole run, publishing
    work.py     the work dir and per-rank journals  worker.py   one video at a time under a time limit
                (--resume, --append)
"""

from videobert_ds.data.prepare.corpus import prepare_corpus
from videobert_ds.data.prepare.entries import Entry, Skip, read_manifest, sample_key_prefix
from videobert_ds.data.prepare.labels import Annotator, valid_qa
from videobert_ds.data.prepare.options import PROG, PrepareError, PrepareOptions
from videobert_ds.data.prepare.ranks import launcher_rank, mpi_comm, run_rank
from videobert_ds.data.prepare.video import VideoResult, process_video

__all__ = [
    "PROG",
    "Annotator",
    "Entry",
    "PrepareError",
    "PrepareOptions",
    "Skip",
    "VideoResult",
    "launcher_rank",
    "mpi_comm",
    "prepare_corpus",
    "process_video",
    "read_manifest",
    "run_rank",
    "sample_key_prefix",
    "valid_qa",
]
