"""Data-centric experiments (issue 6): SAS subsets and AdaInf inflation on Fashion-MNIST."""
