"""Where a preset's weights come from: a file you name, the package, a cache, or a download.

``resolve(preset, weights)`` returns the checkpoint file to read:

* ``weights`` given: that file (a Hugging Face model folder means its ``model.safetensors``);
* a model read from its own folder (``Preset.weights_path``, ``--model PATH``): that folder's
  weights file (``--weights`` still wins);
* bundled weights (the demo model): the file in ``vidattn/data/``;
* an official release address (``Preset.weights_url``, e.g. DINO's ``.pth``): first torch hub's
  cache (``$TORCH_HOME/hub/checkpoints/``, where ``torch.hub.load`` of the official repository
  keeps the same file), then vidattn's (``$VIDATTN_HOME/<preset>/``), else downloaded there once;
* weights on the Hugging Face Hub (``Preset.hf_repo``): ``huggingface_hub`` and its cache
  (``HF_HOME``, ``HF_HUB_OFFLINE``, resumable downloads);
* weights without a public address (``Preset.gated``): from the Hugging Face cache when they
  are there, else a one-line error saying where to request them.

Offline, a download fails within seconds with one line saying how to pass the file instead.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from vidattn.errors import VidattnError
from vidattn.io import temporary_path

__all__ = ["cache_dir", "cached_path", "cached_weights", "resolve", "torch_hub_dir"]

DOWNLOAD_TIMEOUT_S = 5.0  # per socket operation: connecting, and each read of the download
DATA = Path(__file__).resolve().parent.parent / "data"  # weights bundled with the package


def cache_dir() -> Path:
    """``$VIDATTN_HOME``, else ``$XDG_CACHE_HOME/vidattn``, else ``~/.cache/vidattn``."""
    if os.environ.get("VIDATTN_HOME"):
        return Path(os.environ["VIDATTN_HOME"]).expanduser()
    return _xdg_cache() / "vidattn"


def torch_hub_dir() -> Path:
    """torch hub's checkpoint folder, as ``torch.hub.get_dir()`` finds it without torch:
    ``$TORCH_HOME/hub/checkpoints``, ``$TORCH_HOME`` defaulting to ``$XDG_CACHE_HOME/torch``."""
    home = os.environ.get("TORCH_HOME")
    return (Path(home).expanduser() if home else _xdg_cache() / "torch") / "hub" / "checkpoints"


def _xdg_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg).expanduser() if xdg else Path.home() / ".cache"


def _url_name(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise VidattnError(f"cannot name a cache file after the download address {url}")
    return name


def cached_path(preset_name: str, url: str) -> Path:
    """Where vidattn keeps the download of ``url``: ``<cache>/<preset>/<url basename>``."""
    return cache_dir() / preset_name / _url_name(url)


def _cached_url(preset_name: str, url: str) -> Path | None:
    """The downloaded file of ``url`` in torch hub's cache or vidattn's, else None."""
    for path in (torch_hub_dir() / _url_name(url), cached_path(preset_name, url)):
        if path.is_file():
            return path
    return None


def _cached(preset) -> tuple[Path, str] | None:
    """``(file, where)`` of ``preset``'s own weights already on this machine, else None; never
    touches the network. Where: "bundled", "torch hub", "vidattn" or "hugging face"."""
    if preset.packaged_weights:
        return DATA / preset.packaged_weights, "bundled"
    if preset.weights_url:
        found = _cached_url(preset.name, preset.weights_url)
        if found is not None:
            return found, "torch hub" if found.parent == torch_hub_dir() else "vidattn"
    if preset.hf_repo:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(preset.hf_repo, preset.hf_file)
        if isinstance(found, str):
            return Path(found), "hugging face"
    return None


def cached_weights(preset) -> str | None:
    """Where ``preset``'s own weights already are, for listings: ``"bundled"``, ``"torch hub"``,
    ``"vidattn"`` or ``"hugging face"``; None when they would have to be downloaded (or
    requested)."""
    found = _cached(preset)
    return None if found is None else found[1]


def resolve(preset, weights=None) -> Path:
    """The checkpoint file for ``preset``: ``weights`` if given (it must exist), else the
    preset's own weights: its folder's file (``weights_path``), bundled or cached, else
    downloaded (the official release first),
    else, for gated weights, one line saying where to request them."""
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            if not (path / "model.safetensors").is_file():
                raise VidattnError("is a folder without model.safetensors", path)
            return path / "model.safetensors"
        if not path.is_file():
            raise VidattnError("weights file does not exist", path)
        return path
    if preset.weights_path:
        path = Path(preset.weights_path)
        if not path.is_file():
            raise VidattnError("weights file does not exist (the model's folder changed since "
                               "its config was read)", path)
        return path
    found = _cached(preset)
    if found is not None:
        return found[0]
    if preset.gated:
        where = f" or accept the licence at https://huggingface.co/{preset.hf_repo}" * bool(
            preset.hf_repo)
        raise VidattnError(
            f"preset {preset.name!r} has no public download address: its weights are requested "
            f"at {preset.gated}{where}; then pass the file with --weights PATH (Python: "
            f"weights=PATH)")
    if preset.weights_url:
        return download(preset.name, preset.weights_url)
    if preset.hf_repo:
        return _from_hugging_face(preset)
    raise VidattnError(f"preset {preset.name!r} has no download address; pass the file with "
                       "--weights PATH (Python: weights=PATH)")


def download(preset_name: str, url: str) -> Path:
    """Fetch ``url`` into ``cached_path(preset_name, url)`` atomically (a temporary file in the
    same folder, renamed into place once complete and recognised as a checkpoint) -> that path.
    Any failure leaves nothing and raises one line saying how to do without the download."""
    from tqdm import tqdm

    from vidattn.models.formats import sniff

    target = cached_path(preset_name, url)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VidattnError(f"cannot create the weights cache ({err.strerror})",
                           target.parent) from None
    tmp = temporary_path(target)
    try:
        with open(tmp, "wb") as out, urllib.request.urlopen(
            url, timeout=DOWNLOAD_TIMEOUT_S
        ) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc=f"downloading {preset_name} weights",
            ) as bar:  # fmt: skip
                received = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise OSError(f"connection closed after {received} of {total} bytes")
        sniff(tmp)  # an HTML error page is not a checkpoint: refuse it here
        os.replace(tmp, target)
    except (OSError, http.client.HTTPException, ValueError, VidattnError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        elif isinstance(exc, urllib.error.URLError):
            reason = str(exc.reason)
        elif isinstance(exc, VidattnError):
            reason = "the server sent something that is not a checkpoint"
        else:
            reason = str(exc) or type(exc).__name__
        raise VidattnError(
            f"cannot download weights for {preset_name} from {url} ({reason}). Download the file"
            f" elsewhere and pass it with weights=PATH (CLI: --weights PATH), or place it at"
            f" {target}."
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _from_hugging_face(preset) -> Path:
    """Download ``preset.hf_file`` of ``preset.hf_repo`` into the Hugging Face cache (not found
    there before) through ``huggingface_hub``, after a quick check that the Hub can be reached at
    all, because ``huggingface_hub`` retries an unreachable host for about 25 s."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    repo, name = preset.hf_repo, preset.hf_file
    address = f"{constants.ENDPOINT}/{repo} ({name})"
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would break our one-line errors
    try:
        if not constants.HF_HUB_OFFLINE:
            check_reachable(constants.ENDPOINT)
        return Path(hf_hub_download(repo, name))
    except (OSError, HfHubHTTPError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if constants.HF_HUB_OFFLINE:
            reason = "HF_HUB_OFFLINE is set and the file is not in the Hugging Face cache"
        raise VidattnError(
            f"cannot download weights for {preset.name} from {address}: {reason[:300]}. Download "
            f"the file elsewhere and pass it with weights=PATH (CLI: --weights PATH)"
        ) from None
    finally:
        hub_logger.setLevel(level)


def check_reachable(endpoint: str):
    """Raise OSError unless a TCP connection to ``endpoint``'s host opens within the timeout."""
    parts = urllib.parse.urlparse(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=DOWNLOAD_TIMEOUT_S).close()
    except OSError as exc:
        raise OSError(f"{parts.hostname} cannot be reached ({exc.strerror or exc})") from None
