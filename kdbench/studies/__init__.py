"""Paper reproductions built on kdbench's run records (one module per study).

- :mod:`kdbench.studies.hinton` -- Hinton, Vinyals & Dean (2015), MNIST: teacher, scratch and
  distilled student as test errors out of 10,000, next to the published numbers.
- :mod:`kdbench.studies.tokens` -- the token study's question per arm (teacher kept in NLL, KL to the true law).
- :mod:`kdbench.studies.published` -- the published numbers the studies compare against, with their source.
"""
