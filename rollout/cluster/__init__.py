"""Where the run's actors go and how they start: placement groups, pre-flight against the live cluster, the
capacity (memory and time) plan, bounded start-up waits, and the learner rank actors with the groups that own them.
"""
