"""The coordinated loop and everything around it.

At the top of the package sits the loop itself: ``controller`` (one iteration, end to end), ``components``
(the run's actors behind the verbs the controller uses), ``pipeline`` (single-process inference with a trained
pair), ``train`` (the job entry), ``config`` (the run config), ``checkpoint``, ``models`` (model directories and
the embedded warm start), ``evaluation`` and ``env``. Each sub-package is one concern beneath it:

- ``records``: the typed records that cross stage boundaries, the config base types, image handles;
- ``data``: manifests, synthetic degradations, photo streams;
- ``cluster``: placement, pre-flight, the capacity plan, start-up waits, learner rank actors and groups;
- ``sync``: weight sync from learner ranks into serving replicas (wire protocol and driver-side owner);
- ``tracking``: MLflow, Ray metrics, figures and the console's step lines;
- ``commands``: the ``photocrafter`` command line.

docs/design/map.md maps each stage of a step to the file that runs it.
"""
