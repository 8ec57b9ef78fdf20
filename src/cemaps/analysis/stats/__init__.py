"""Statistics of the reference study's questions on a disruption table.

One module per question: ``methods`` (which method disrupts most), ``abstractness``
(are abstract prompts more fragile), ``semantic`` (does disruption follow semantic
proximity), ``layers`` (which layers' attention shift links to disruption),
``clustering`` (prompt and model clusters); ``common`` holds the shared test machinery.
"""
