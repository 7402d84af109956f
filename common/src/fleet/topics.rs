//! Topic names. Every segment a device or operator supplies (prefix parts, device id, group,
//! command name) is checked by [`check_segment`], so no id can contain a wildcard or a level
//! separator and reach another device's topics.

use super::Component;

/// The level under the prefix that group topics live in: no device may be called this.
pub const GROUP_LEVEL: &str = "group";

/// Whether `s` may be one topic level: 1 to 64 bytes of `[A-Za-z0-9._-]`. `what` names it in
/// the error.
pub fn check_segment(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err(format!("{what} must be 1 to 64 characters (got {} bytes)", s.len()));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        return Err(format!("{what} `{s}` holds `{c}`; only letters, digits, `.`, `_` and `-` are allowed"));
    }
    Ok(())
}

/// The topics of one component of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    device: String,
    component: Component,
}

/// Where a command arrived: for this device alone or for one of its groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandTopic {
    /// The command's name (`reload`, `config.set`, ...).
    pub name: String,
    /// The group, when it was sent to a group.
    pub group: Option<String>,
}

impl Topics {
    /// The topics for `device`'s `component` under `prefix` (levels separated by `/`; each
    /// level checked like any segment).
    pub fn new(prefix: &str, device: &str, component: Component) -> Result<Self, String> {
        for level in prefix.split('/') {
            check_segment("topic_prefix level", level)?;
        }
        check_segment("device_id", device)?;
        if device == GROUP_LEVEL {
            return Err(format!("device_id may not be `{GROUP_LEVEL}` (the group topics' level)"));
        }
        Ok(Self { prefix: prefix.to_owned(), device: device.to_owned(), component })
    }

    /// The device id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The component.
    pub fn component(&self) -> Component {
        self.component
    }

    fn base(&self) -> String {
        format!("{}/{}/{}", self.prefix, self.device, self.component.as_str())
    }

    /// `P/D/C/status` (retained).
    pub fn status(&self) -> String {
        format!("{}/status", self.base())
    }

    /// `P/D/C/telemetry`.
    pub fn telemetry(&self) -> String {
        format!("{}/telemetry", self.base())
    }

    /// `P/D/C/result`.
    pub fn result(&self) -> String {
        format!("{}/result", self.base())
    }

    /// `P/D/C/cmd/<name>`.
    pub fn command(&self, name: &str) -> String {
        format!("{}/cmd/{name}", self.base())
    }

    /// The filters a device subscribes to: its own commands and its groups'.
    pub fn command_filters(&self, groups: &[String]) -> Vec<String> {
        let mut filters = vec![format!("{}/cmd/+", self.base())];
        filters.extend(groups.iter().map(|g| group_command(&self.prefix, g, self.component, "+")));
        filters
    }

    /// Which command a publish on `topic` is, if it is one of this device's command topics.
    pub fn parse_command(&self, topic: &str, groups: &[String]) -> Option<CommandTopic> {
        if let Some(name) = topic.strip_prefix(&format!("{}/cmd/", self.base())) {
            return Some(CommandTopic { name: name.to_owned(), group: None });
        }
        let rest = topic.strip_prefix(&format!("{}/{GROUP_LEVEL}/", self.prefix))?;
        let (group, rest) = rest.split_once('/')?;
        let name = rest.strip_prefix(&format!("{}/cmd/", self.component.as_str()))?;
        groups
            .iter()
            .any(|g| g == group)
            .then(|| CommandTopic { name: name.to_owned(), group: Some(group.to_owned()) })
    }
}

/// `P/group/<group>/C/cmd/<name>`.
pub fn group_command(prefix: &str, group: &str, component: Component, name: &str) -> String {
    format!("{prefix}/{GROUP_LEVEL}/{group}/{}/cmd/{name}", component.as_str())
}

/// Filters an operator subscribes to: every device's status, results and telemetry.
pub fn fleet_filters(prefix: &str) -> [String; 3] {
    [format!("{prefix}/+/+/status"), format!("{prefix}/+/+/result"), format!("{prefix}/+/+/telemetry")]
}

/// Splits a device topic `P/D/C/<rest>` into device, component and the rest.
pub fn split_device_topic<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, Component, &'a str)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let mut parts = rest.splitn(3, '/');
    let device = parts.next()?;
    let component = Component::parse(parts.next()?)?;
    let tail = parts.next()?;
    (device != GROUP_LEVEL).then_some((device, component, tail))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_parses_topics() {
        let t = Topics::new("outpost", "pi-01", Component::Runtime).unwrap();
        assert_eq!(t.status(), "outpost/pi-01/runtime/status");
        assert_eq!(t.result(), "outpost/pi-01/runtime/result");
        let groups = vec!["kitchen".to_owned()];
        assert_eq!(
            t.command_filters(&groups),
            vec!["outpost/pi-01/runtime/cmd/+", "outpost/group/kitchen/runtime/cmd/+"]
        );
        let own = t.parse_command("outpost/pi-01/runtime/cmd/reload", &groups).unwrap();
        assert_eq!((own.name.as_str(), own.group), ("reload", None));
        let g = t.parse_command("outpost/group/kitchen/runtime/cmd/cache.clear", &groups).unwrap();
        assert_eq!(g.group.as_deref(), Some("kitchen"));
        assert!(t.parse_command("outpost/group/garage/runtime/cmd/reload", &groups).is_none());
        assert!(t.parse_command("outpost/group/kitchen/updater/cmd/update", &groups).is_none());
        assert!(t.parse_command("outpost/pi-02/runtime/cmd/reload", &groups).is_none());
        assert_eq!(
            split_device_topic("outpost", "outpost/pi-01/updater/result"),
            Some(("pi-01", Component::Updater, "result"))
        );
        assert_eq!(split_device_topic("outpost", "outpost/group/x/runtime/cmd/a"), None);
    }

    #[test]
    fn ids_cannot_reach_other_topics() {
        for bad in ["", "a/b", "+", "#", "pi 01", "é"] {
            assert!(Topics::new("outpost", bad, Component::Runtime).is_err(), "{bad:?}");
        }
        assert!(Topics::new("outpost", "group", Component::Runtime).is_err());
        assert!(Topics::new("fleet/+", "pi", Component::Runtime).is_err());
        assert!(Topics::new("acme/outpost", "pi", Component::Runtime).is_ok());
    }
}
