"""The classroom: a class of students on one lab.

- :mod:`roster` — the students, their accounts (a sender and a receiver
  mailbox each, or a partner) and generated passwords;
- :mod:`plan` — what a lesson asks of each student in a class and the protocol
  evidence that grades it (the lesson file's ``[class]`` table);
- :mod:`attribution` — which student each session belongs to (by login, by the
  AUTH user name of a failed attempt, by client address), and the class's
  messages across sessions;
- :mod:`progress` — each student's own lesson state: evidence, hints, attempts;
- :mod:`state` — the whole class: every Step attributed, every student's progress;
- :mod:`grading` — per-student results from a class run or from captures, as
  CSV, JSON and a Moodle grade-import CSV; :mod:`gift` — the quizzes as Moodle GIFT;
- :mod:`hub` — the live Step sink that feeds the web view;
- :mod:`web` — the teacher's dashboard, the projector, each student's page and
  the replay (twisted.web, server-sent events, every asset served locally from
  ``web/``); :mod:`replay` — the runs it can replay;
- :mod:`handout` — a printable handout per student;
- :mod:`practice` — a scripted student with real clients (tests, the bench);
- :mod:`run` — ``gponsim class start``: the lab, the hub and the web view in one
  process; :mod:`command` — the CLI's side of it;
- ``words.toml`` — every text the class shows, in Spanish and English.
"""
