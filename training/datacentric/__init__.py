"""Data-centric methods: which examples to train on (SAS subsets) and what extra data to add
(AdaInf inflation).

* :mod:`~training.datacentric.subsets` -- subset datasets and subset index files;
* :mod:`~training.datacentric.kmeans` -- seeded k-means (generic);
* :mod:`~training.datacentric.sas` -- SAS (Joshi & Mirzasoleiman, ICML 2023): proxy embeddings,
  approximate latent classes, the selection, :class:`~training.datacentric.sas.SASSubsetDataset`;
* :mod:`~training.datacentric.adainf` -- AdaInf (Wang et al., ICLR 2024): inflation npz files and stand-ins;
* :mod:`~training.datacentric.cli` -- the ``sslzoo subset`` / ``sslzoo adainf`` parsers.

Nothing is imported here, so ``sslzoo`` can register the parsers without loading torch.
"""
