"""What prediction reads and writes besides pictures: videos in and out, overlays, pose records.

- ``video``: files, streams and cameras read with PyAV, overlay videos written;
- ``visualize``: palette label maps, parsing overlays, skeletons, validation panels;
- ``pose_records``: predicted joints and people as JSON records (``--pose``).

May import: codecs, utils.
"""
