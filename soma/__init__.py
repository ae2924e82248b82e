"""The ``soma`` command and the settings every process shares."""
