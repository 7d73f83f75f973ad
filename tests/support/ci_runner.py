#!/usr/bin/python3
"""ci_runner.py - run the shell steps of a CI example, as the CI would.

  ci_runner.py github WORKFLOW.yml JOB [JOB...]
  ci_runner.py gitlab GITLAB-CI.yml JOB [JOB...]

Runs each named job's shell in order, in the current directory (the
workspace: a job's files stay for the next, as artifacts would carry them):
GitHub's `run:` steps with `bash --noprofile --norc -eo pipefail`, the env of
the workflow, the job and the step merged, `${{ secrets.NAME }}` read from
this process's environment (unset: empty, as GitHub does); `uses:` steps
(checkout, artifacts) are skipped -- the workspace is already there.
GitLab's `default.before_script` then `script` lines in one bash -e shell,
`variables` merged.  Prints each step's name; exits with the first failing
step's status (the job's), 0 when every job passed.
"""
import os
import re
import subprocess
import sys

import yaml

SECRET = re.compile(r"\$\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
OTHER = re.compile(r"\$\{\{.*?\}\}")


def expand(value):
    value = str(value)
    value = SECRET.sub(lambda m: os.environ.get(m.group(1), ""), value)
    if OTHER.search(value):
        sys.exit("ci_runner: unsupported expression in %r" % value)
    return value


def run(script, env, shell):
    e = dict(os.environ)
    e.update(env)
    return subprocess.call(shell + [script], env=e)


def github(doc, jobs):
    base = {k: expand(v) for k, v in (doc.get("env") or {}).items()}
    for name in jobs:
        job = doc["jobs"][name]
        env = dict(base)
        env.update({k: expand(v) for k, v in (job.get("env") or {}).items()})
        for i, step in enumerate(job["steps"], 1):
            label = "%s / %s" % (name, step.get("name") or step.get("uses") or "step %d" % i)
            if "uses" in step:
                print("ci_runner: skip %s" % label, flush=True)
                continue
            senv = dict(env)
            senv.update({k: expand(v) for k, v in (step.get("env") or {}).items()})
            senv.setdefault("GITHUB_PATH", os.devnull)
            print("ci_runner: run %s" % label, flush=True)
            rc = run(step["run"], senv, ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"])
            if rc != 0:
                print("ci_runner: %s failed with %d" % (label, rc), flush=True)
                return rc
    return 0


def gitlab(doc, jobs):
    base = {k: str(v) for k, v in (doc.get("variables") or {}).items()}
    before = (doc.get("default") or {}).get("before_script") or []
    stages = doc.get("stages") or []
    order = sorted(jobs, key=lambda j: stages.index(doc[j]["stage"]))
    for name in order:
        job = doc[name]
        env = dict(base)
        env.update({k: str(v) for k, v in (job.get("variables") or {}).items()})
        lines = list(job.get("before_script", before)) + list(job["script"])
        print("ci_runner: run %s (stage %s%s)" % (name, job["stage"],
              ", manual" if job.get("when") == "manual" else ""), flush=True)
        rc = run("\n".join(lines), env, ["bash", "-e", "-c"])
        if rc != 0:
            print("ci_runner: %s failed with %d" % (name, rc), flush=True)
            return rc
    return 0


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("github", "gitlab"):
        sys.exit(__doc__)
    with open(sys.argv[2]) as f:
        doc = yaml.safe_load(f)
    sys.exit(github(doc, sys.argv[3:]) if sys.argv[1] == "github" else gitlab(doc, sys.argv[3:]))


if __name__ == "__main__":
    main()
