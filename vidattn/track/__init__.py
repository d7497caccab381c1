"""Correspondence on video: mask tracking by label propagation, and its DAVIS 2017 scores.

``frames``: the sources (a video, or a folder of frames as DAVIS ships them); ``protocols``:
each reference's frame size, normalisation and propagation settings; ``propagate``: the label
propagation itself, in bounded memory; ``seeds``: the first frame's labels from a mask, points
or boxes; ``davis``: DAVIS masks, folders and the J and F metrics; ``pipeline``: ``vidattn
track`` (reader -> model -> propagation -> render -> writer); ``evaluate``: ``vidattn
track-eval``; ``baselines``: two trackers without a ViT (copy the first mask, optical flow).
"""
