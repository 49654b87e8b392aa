"""The workflow's HTML report: what it shows (:mod:`.data`), its plots (:mod:`.plots`) and the
page (:mod:`.render`, ``templates/report.html.j2``). Gathering the data from the lake and MLflow
is the report task's job (:mod:`retailml.stages.report`); nothing here needs Spark."""
