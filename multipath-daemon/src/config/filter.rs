//! The blacklist and its exceptions.

use std::fmt;

use regex::Regex;

/// What the filter knows about a path device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceId<'a> {
    /// Kernel name, e.g. `sda`.
    pub devnode: &'a str,
    /// The LUN's WWID, when known (WWID rules are skipped when it is not).
    pub wwid: Option<&'a str>,
    /// SCSI vendor and product (sysfs `vendor`, `model`), blanks trimmed.
    pub vendor: &'a str,
    pub product: &'a str,
    /// The names of the device's udev properties, where udev runs (`None`: unknown,
    /// property rules are skipped).
    pub properties: Option<&'a [String]>,
}

/// Whether a device may be multipathed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// `reason` names the rule and where it is, e.g.
    /// `blacklist devnode "^sd[c-z]" (mpathd.toml:12:1)`.
    Blacklisted {
        reason: String,
    },
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed)
    }
}

/// One regex rule. Like multipath-tools, it matches anywhere in the value (use `^` and
/// `$` to anchor).
#[derive(Debug, Clone)]
pub struct Rule {
    pub pattern: Regex,
    /// `file:line:col` of the rule (empty when built in code).
    pub location: String,
}

impl Rule {
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            pattern: super::compile_search(pattern)?,
            location: String::new(),
        })
    }

    pub fn at(mut self, location: impl Into<String>) -> Self {
        self.location = location.into();
        self
    }

    pub fn as_str(&self) -> &str {
        self.pattern.as_str()
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern.as_str() == other.pattern.as_str()
    }
}

/// A vendor/product rule: matches when each given regex matches (a missing one matches
/// any value).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRule {
    pub vendor: Option<Rule>,
    pub product: Option<Rule>,
    pub location: String,
}

impl DeviceRule {
    pub fn matches(&self, vendor: &str, product: &str) -> bool {
        self.vendor
            .as_ref()
            .is_none_or(|r| r.pattern.is_match(vendor))
            && self
                .product
                .as_ref()
                .is_none_or(|r| r.pattern.is_match(product))
    }
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, rule) in [("vendor", &self.vendor), ("product", &self.product)] {
            if let Some(r) = rule {
                if !first {
                    f.write_str(" ")?;
                }
                first = false;
                write!(f, "{name} {:?}", r.as_str())?;
            }
        }
        Ok(())
    }
}

/// `[blacklist]` or `[blacklist_exceptions]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub devnode: Vec<Rule>,
    pub wwid: Vec<Rule>,
    pub device: Vec<DeviceRule>,
    /// Regexes matched against the names of the device's udev properties.
    pub property: Vec<Rule>,
}

/// The udev property that says udev identified the device (multipath-tools' default
/// `uid_attribute` for SCSI): only then does a device lacking every excepted property
/// count as blacklisted.
pub const UID_PROPERTY: &str = "ID_SERIAL";

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.devnode.is_empty()
            && self.wwid.is_empty()
            && self.device.is_empty()
            && self.property.is_empty()
    }

    fn property_match<'r>(&'r self, names: &'r [String]) -> Option<(&'r Rule, &'r str)> {
        self.property.iter().find_map(|r| {
            names
                .iter()
                .find(|n| r.pattern.is_match(n))
                .map(|n| (r, n.as_str()))
        })
    }

    fn devnode_match(&self, devnode: &str) -> Option<&Rule> {
        self.devnode.iter().find(|r| r.pattern.is_match(devnode))
    }

    fn wwid_match(&self, wwid: &str) -> Option<&Rule> {
        self.wwid.iter().find(|r| r.pattern.is_match(wwid))
    }

    fn device_match(&self, vendor: &str, product: &str) -> Option<&DeviceRule> {
        self.device.iter().find(|r| r.matches(vendor, product))
    }
}

fn at(location: &str) -> String {
    if location.is_empty() {
        String::new()
    } else {
        format!(" ({location})")
    }
}

/// multipath-tools' `filter_path` order: property, devnode, device, wwid; in each kind
/// an exception wins over the blacklist. Property rules, as multipath-tools'
/// `filter_property`: with exceptions configured, a device udev identified
/// ([`UID_PROPERTY`]) that has no excepted property is blacklisted.
pub(crate) fn check(black: &Filter, except: &Filter, dev: &DeviceId<'_>) -> Verdict {
    if let Some(names) = dev.properties
        && except.property_match(names).is_none()
    {
        if let Some((r, name)) = black.property_match(names) {
            return Verdict::Blacklisted {
                reason: format!(
                    "blacklist property {:?} matches {name}{}",
                    r.as_str(),
                    at(&r.location)
                ),
            };
        }
        if !except.property.is_empty() && names.iter().any(|n| n == UID_PROPERTY) {
            let rules: Vec<String> = except
                .property
                .iter()
                .map(|r| format!("{:?}{}", r.as_str(), at(&r.location)))
                .collect();
            return Verdict::Blacklisted {
                reason: format!(
                    "udev property missing: none matches blacklist_exceptions property {}",
                    rules.join(", ")
                ),
            };
        }
    }
    if except.devnode_match(dev.devnode).is_none()
        && let Some(r) = black.devnode_match(dev.devnode)
    {
        return Verdict::Blacklisted {
            reason: format!("blacklist devnode {:?}{}", r.as_str(), at(&r.location)),
        };
    }
    if except.device_match(dev.vendor, dev.product).is_none()
        && let Some(r) = black.device_match(dev.vendor, dev.product)
    {
        return Verdict::Blacklisted {
            reason: format!("blacklist device {r}{}", at(&r.location)),
        };
    }
    if let Some(wwid) = dev.wwid
        && except.wwid_match(wwid).is_none()
        && let Some(r) = black.wwid_match(wwid)
    {
        return Verdict::Blacklisted {
            reason: format!("blacklist wwid {:?}{}", r.as_str(), at(&r.location)),
        };
    }
    Verdict::Allowed
}
