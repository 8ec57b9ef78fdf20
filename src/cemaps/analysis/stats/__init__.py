"""Statistics of the reference study's questions on a disruption table.

One module per question: ``methods`` (which method disrupts most), ``abstractness``
(are abstract prompts more fragile), ``semantic`` (does disruption follow semantic
proximity; its text-similarity test in ``similarity``), ``layers`` (which layers' attention shift links to disruption),
``clustering`` (prompt and model clusters); ``common`` holds the shared test machinery;
``power`` the minimum detectable effects, simulated on the study's ``design``
(layout and variance components); ``run`` (``run_statistics``) runs them all on one table
and ``findings`` writes what they show as sentences.
"""
