"""``vidattn track-eval``: the semi-supervised DAVIS 2017 protocol on a DAVIS folder.

For each sequence of the split: its first annotation is the seed, every later frame is tracked
(``pipeline.track_masks``) into ``OUT/<sequence>/<frame>.png``, as DINO's
``eval_video_segmentation.py`` writes its results; then ``davis.score_folder`` scores them with
davis2017-evaluation's J and F, and ``OUT`` gets its two CSV files. ``OUT`` appears whole at the
end (a failed or interrupted run leaves nothing).
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from vidattn.io import discard_folder, publish_folder, temporary_folder
from vidattn.options import TrackOptions
from vidattn.track.davis import DavisFolder, score_folder, write_csvs
from vidattn.track.frames import open_source
from vidattn.track.pipeline import protocol_of, track_masks
from vidattn.track.seeds import Seed


def evaluate_davis(model, root, out_dir, split: str = "val", sequences=None,
                   opts: TrackOptions | None = None, budget_bytes=None):
    """Track and score ``sequences`` (None: the split's list) of the DAVIS 2017 folder ``root``
    into ``out_dir`` -> the scores (``davis.score_folder``) and the protocol line."""
    opts = opts or TrackOptions()
    davis = DavisFolder(root, split)
    names = davis.select(sequences) if sequences else list(davis.sequences)
    protocol = protocol_of(model, opts)
    sources = {seq: open_source(davis.frames(seq)[0].parent) for seq in names}
    temp = temporary_folder(Path(out_dir))
    try:
        bar = tqdm(total=sum(s.n_frames for s in sources.values()), unit="frame",
                   disable=not opts.progress, dynamic_ncols=True, desc="track-eval")
        with bar:
            for seq, source in sources.items():
                bar.set_postfix_str(seq)
                folder = temp / seq
                folder.mkdir()
                track_masks(model, source, Seed(mask=davis.annotations(seq)[0]), protocol,
                            folder, opts, budget_bytes, bar)
        scores = score_folder(davis, temp, names)
        write_csvs(scores, temp, split)
        publish_folder(temp, Path(out_dir))
    except BaseException:
        discard_folder(temp)
        raise
    return scores, protocol.describe(model.preset.stride)
