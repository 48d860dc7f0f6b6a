//! `sluice schedule …`.

use super::*;

pub(super) async fn schedule(
    api: &Api,
    command: ScheduleCommand,
    json: bool,
) -> Result<(), Failure> {
    let path = |name: &str| format!("/v1/schedules/{}", enc(name));
    let value = match command {
        ScheduleCommand::Set {
            name,
            cron,
            timezone,
            every,
            gate,
            url,
            method,
            body,
            misfire,
            catchup_limit,
            jitter,
            max_attempts,
        } => {
            let mut webhook = json!({ "url": url });
            if let Some(m) = method {
                webhook["method"] = json!(m);
            }
            if let Some(b) = body {
                webhook["body"] = body_value(b)?;
            }
            let mut task = json!({ "gate": gate, "webhook": webhook });
            if let Some(n) = max_attempts {
                task["max_attempts"] = json!(n);
            }
            let mut s = json!({ "task": task });
            for (k, v) in [
                ("cron", cron),
                ("timezone", timezone),
                ("every", every),
                ("misfire", misfire),
                ("jitter", jitter),
            ] {
                if let Some(v) = v {
                    s[k] = json!(v);
                }
            }
            if let Some(n) = catchup_limit {
                s["catchup_limit"] = json!(n);
            }
            api.call(reqwest::Method::PUT, &path(&name), Some(&s))
                .await?
        }
        ScheduleCommand::Get { name } => api.get(&path(&name)).await?,
        ScheduleCommand::Ls => {
            let v = api.get("/v1/schedules").await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", schedules_table(&v));
            }
            return Ok(());
        }
        ScheduleCommand::Rm { name } => {
            api.call(reqwest::Method::DELETE, &path(&name), None)
                .await?;
            if !json {
                println!("deleted schedule {name}");
            }
            return Ok(());
        }
        ScheduleCommand::Pause { name } => {
            api.call(
                reqwest::Method::POST,
                &format!("{}/pause", path(&name)),
                None,
            )
            .await?
        }
        ScheduleCommand::Resume { name } => {
            api.call(
                reqwest::Method::POST,
                &format!("{}/resume", path(&name)),
                None,
            )
            .await?
        }
    };
    if json {
        print_json(&value);
    } else {
        print!("{}", schedule_detail(&value));
    }
    Ok(())
}

pub(super) fn schedules_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["schedules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            vec![
                s["name"].as_str().unwrap_or("").to_string(),
                s["cron"].as_str().map_or_else(
                    || format!("every {}", s["every"].as_str().unwrap_or("?")),
                    str::to_string,
                ),
                s["timezone"].as_str().unwrap_or("").to_string(),
                if s["paused"] == true {
                    "paused".into()
                } else {
                    "active".into()
                },
                s["next_runs"][0].as_str().unwrap_or("-").to_string(),
                s["last_runs"][0]["state"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
                format!("{}/{}", num(&s["missed"]), num(&s["skipped"])),
            ]
        })
        .collect();
    table(
        &[
            "SCHEDULE",
            "RULE",
            "ZONE",
            "STATE",
            "NEXT RUN",
            "LAST",
            "MISSED/SKIPPED",
        ],
        &rows,
    )
}

pub(super) fn schedule_detail(s: &Value) -> String {
    let mut out = schedules_table(&json!({ "schedules": [s] }));
    out.push_str("\nnext runs:\n");
    for r in s["next_runs"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!("  {}\n", r.as_str().unwrap_or("")));
    }
    let runs: Vec<Vec<String>> = s["last_runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            vec![
                r["scheduled_at"].as_str().unwrap_or("").to_string(),
                r["task"].as_str().unwrap_or("").to_string(),
                r["state"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    if !runs.is_empty() {
        out.push_str("\nlast runs:\n");
        out.push_str(&table(&["SCHEDULED", "TASK", "STATE"], &runs));
    }
    out
}
