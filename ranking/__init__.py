"""Ranking integration of LEARN embeddings (paper section 4.4): datasets, rankers, metrics, report.

Entry points: ``ranking.experiment.run_ranking_experiment`` and ``ranking.cli.register``.
See docs/ranking.md.
"""
