"""Encoding targets and decoding predictions, as mmpose's codecs: the one home of each format.

- ``heatmaps``: joint heatmaps (encode, decode), left/right mirror swaps of joints, labels and maps;
- ``partition``: the multi-person partition branch's offset targets and the grouping of joints into people.

May import: transforms, utils.
"""
