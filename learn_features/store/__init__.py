"""The Feast side of learn-features: everything that talks to the feature store or serves from it.

The core (``data``, ``cex``, ``pch``, ``embeddings_io``, ``retrieval``) produces embeddings
and knows nothing of Feast; this package delivers them. One module per role:

* ``repo``: names, layout and loading of the Feast repo (``feature_repo/``)
* ``ledger``: the publications in the repo's offline sources, and the rules every writer keeps
* ``commit``: writing one publication (Parquet rows, schema files, one atomic rename)
* ``publish``: a run's embeddings -> the repo's offline sources (``learn-features publish``)
* ``published``: reads of what was published (the vector in effect per id and time, stale pushes)
* ``user_publications``: user vectors stamped at their own times, as ``users`` publications
* ``materialize``: publications an online store lacks -> that store (``learn-features materialize``)
* ``verify``: does the online store serve what was published? (``learn-features verify-online``)
* ``push``: cold-start item vectors straight to the online store (``embed-items --push``)
* ``replay``: a per-run replay repo stamped at the data cut (``publish --replay``)
* ``user_snapshots``: every user's vector as of snapshot times (``learn-features embed-users``)
* ``histories`` and ``stream``: streamed events -> users' vectors pushed online (``stream-users``)
* ``historical``: point-in-time joins for ranker training data (``get_historical_features``)
* ``serving``: ``LearnFeatureClient``, online scoring for ranking services
* ``candidates``: ``ItemIndex``, top-K retrieval with faiss over the published item vectors
* ``cli``: the subcommands above, registered by ``learn_features.cli``

Nothing here imports Feast at import time (``import feast`` takes seconds, as it pulls in
torch); the modules import it inside the functions that need it, and this file imports
nothing, so ``learn-features --help`` stays fast.
"""
