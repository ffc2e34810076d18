-- wrk script: POST one chat completion body, as batch-runner sends them.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"sim-model","messages":[{"role":"system","content":"You are a concise assistant."},{"role":"user","content":"Summarise item 1 of the benchmark corpus in one line."}],"max_tokens":16}'
