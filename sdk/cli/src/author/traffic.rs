//! Traffic between a Function's revisions: `wisp deploy --traffic N [--tag T]`,
//! `wisp rollout promote|rollback FUNCTION`.

use anyhow::{anyhow, bail};
use wisp_api::{Function, TrafficTarget, revision_name, revision_number};

use crate::cli::{Global, RolloutArgs};
use crate::resources::{client, describe_error};

/// The revision serving `f` now: the one its latest-revision share goes to.
fn serving(f: &Function) -> Option<String> {
    let status = f.status.as_ref()?;
    status
        .traffic
        .iter()
        .find(|t| t.latest_revision)
        .map(|t| t.revision_name.clone())
        .or_else(|| status.latest_ready_revision.clone())
        .or_else(|| status.latest_created_revision.clone())
}

/// `percent` to the new (latest) revision, the rest pinned to the one serving now.
pub fn split(current: &Function, percent: u32, tag: Option<&str>) -> anyhow::Result<Vec<TrafficTarget>> {
    let name = &current.metadata.name;
    let now = serving(current)
        .ok_or_else(|| anyhow!("function/{name} has no revision serving yet: wait for its first deploy"))?;
    let mut targets = vec![TrafficTarget {
        latest_revision: true,
        percent,
        tag: tag.map(str::to_owned),
        ..TrafficTarget::default()
    }];
    if percent < 100 {
        targets.insert(
            0,
            TrafficTarget {
                revision_name: Some(now),
                percent: 100 - percent,
                ..TrafficTarget::default()
            },
        );
    }
    Ok(targets)
}

fn function_name(target: &[String]) -> anyhow::Result<String> {
    let is_fn = |k: &str| wisp_api::kind_by_name(k).is_some_and(|k| k.kind == "Function");
    match target {
        [one] => match one.split_once('/') {
            Some((kind, name)) if is_fn(kind) => Ok(name.to_owned()),
            Some((kind, _)) => bail!("promote and rollback work on functions, not {kind:?}"),
            None => Ok(one.clone()),
        },
        [kind, name] if is_fn(kind) => Ok(name.clone()),
        _ => bail!("name one function: `function/NAME` or `NAME`"),
    }
}

/// Change `spec.traffic` of the Function `args` names with `change`, retrying conflicts.
async fn retarget(
    global: &Global,
    args: &RolloutArgs,
    change: impl Fn(&Function) -> anyhow::Result<Vec<TrafficTarget>>,
) -> anyhow::Result<()> {
    let client = client(global)?;
    let ns = args.namespace.clone().unwrap_or_else(|| "default".into());
    let name = function_name(&args.target)?;
    let api = client.api::<Function>(Some(&ns));
    let fail = |e: wisp_client::ClientError| anyhow!("function/{name}: {}", describe_error(&e));
    for _ in 0..8 {
        let mut f = api.get(&name).await.map_err(fail)?;
        f.spec.traffic = change(&f)?;
        match api.replace(&f).await {
            Ok(_) => {
                let to: Vec<String> = if f.spec.traffic.is_empty() {
                    vec!["100% to the latest revision".into()]
                } else {
                    f.spec
                        .traffic
                        .iter()
                        .map(|t| {
                            format!(
                                "{}% to {}",
                                t.percent,
                                t.revision_name.as_deref().unwrap_or("the latest")
                            )
                        })
                        .collect()
                };
                super::say(&format!("function/{name}: {}", to.join(", ")));
                return Ok(());
            }
            Err(e) if e.code() == Some(409) => {}
            Err(e) => return Err(fail(e)),
        }
    }
    bail!("function/{name}: changed by someone else 8 times in a row")
}

/// All of the Function's requests to its latest revision (tags go too).
pub async fn promote(global: &Global, args: &RolloutArgs) -> anyhow::Result<()> {
    retarget(global, args, |_| Ok(Vec::new())).await
}

/// All of the Function's requests to the revision before the latest: the one a split keeps
/// its other share on, else the one numbered just before.
pub async fn rollback(global: &Global, args: &RolloutArgs) -> anyhow::Result<()> {
    retarget(global, args, |f| {
        let name = &f.metadata.name;
        let status = f.status.clone().unwrap_or_default();
        let latest = status
            .latest_created_revision
            .ok_or_else(|| anyhow!("function/{name} has no revision yet"))?;
        let pinned = f
            .spec
            .traffic
            .iter()
            .filter_map(|t| t.revision_name.clone())
            .find(|r| *r != latest);
        let previous = match pinned {
            Some(p) => p,
            None => match revision_number(name, &latest) {
                Some(n) if n > 1 => revision_name(name, n - 1),
                _ => bail!("function/{name} has one revision ({latest}): nothing to roll back to"),
            },
        };
        Ok(vec![TrafficTarget {
            revision_name: Some(previous),
            percent: 100,
            ..TrafficTarget::default()
        }])
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_api::{FunctionStatus, ObjectMeta, Resource, TrafficStatus};

    #[test]
    fn a_split_pins_the_serving_revision_and_gives_the_new_one_its_share() {
        let mut f = Function::new(ObjectMeta::namespaced("default", "hello"));
        assert!(split(&f, 10, None).is_err(), "nothing serves yet");
        f.status = Some(FunctionStatus {
            latest_created_revision: Some("hello-00001".into()),
            traffic: vec![TrafficStatus {
                revision_name: "hello-00001".into(),
                percent: 100,
                latest_revision: true,
                ..TrafficStatus::default()
            }],
            ..FunctionStatus::default()
        });
        let t = split(&f, 10, Some("v2")).expect("split");
        assert_eq!(t[0].revision_name.as_deref(), Some("hello-00001"));
        assert_eq!((t[0].percent, t[1].percent), (90, 10));
        assert!(t[1].latest_revision && t[1].tag.as_deref() == Some("v2"));
        assert_eq!(split(&f, 100, None).expect("all").len(), 1);
        assert_eq!(function_name(&["function/hello".into()]).expect("name"), "hello");
        assert!(function_name(&["deployment/hello".into()]).is_err());
    }
}
