//! Filters on CloudEvents attributes: `<attribute>=<operator>:<value>`, e.g. `type=prefix:orders.`.
//! A record is delivered only when every filter matches; the attribute is read from the record's
//! `ce_<attribute>` header (binary content mode of the CloudEvents Kafka binding), except
//! `datacontenttype`, which that binding carries in `content-type`.

use std::fmt;

use tributary_api::subscription::FilterOperator;

/// One condition on one CloudEvents attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    attribute: String,
    /// The Kafka header carrying the attribute.
    header: String,
    operator: FilterOperator,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter {0:?} is not <attribute>=<exact|prefix|suffix>:<value>")]
    Malformed(String),
    #[error("filter {filter:?}: attribute {attribute:?} is not a CloudEvents attribute name (1 to 20 of a-z, 0-9)")]
    Attribute { filter: String, attribute: String },
    #[error("filter {filter:?}: operator {operator:?} is not exact, prefix or suffix")]
    Operator { filter: String, operator: String },
    #[error("filter {0:?} has an empty value")]
    EmptyValue(String),
}

impl Filter {
    /// Parses `<attribute>=<operator>:<value>`. The operator is required, so a value may contain
    /// `:` and `=` freely (`source=exact:urn:shop:orders`).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let (attribute, condition) = text.split_once('=').ok_or_else(|| FilterError::Malformed(text.to_owned()))?;
        let (operator, value) = condition.split_once(':').ok_or_else(|| FilterError::Malformed(text.to_owned()))?;
        // CloudEvents attribute names: lower-case letters and digits, at most 20 of them.
        if attribute.is_empty() || attribute.len() > 20 || !attribute.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(FilterError::Attribute { filter: text.to_owned(), attribute: attribute.to_owned() });
        }
        let operator: FilterOperator = operator
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| FilterError::Operator { filter: text.to_owned(), operator: operator.to_owned() })?;
        if value.is_empty() {
            return Err(FilterError::EmptyValue(text.to_owned()));
        }
        let header = if attribute == "datacontenttype" { "content-type".to_owned() } else { format!("ce_{attribute}") };
        Ok(Filter { attribute: attribute.to_owned(), header, operator, value: value.to_owned() })
    }

    /// The Kafka header this filter reads.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Whether an attribute value (None: the record lacks the attribute) passes.
    pub fn accepts(&self, attribute: Option<&[u8]>) -> bool {
        let Some(actual) = attribute else { return false };
        let expected = self.value.as_bytes();
        match self.operator {
            FilterOperator::Exact => actual == expected,
            FilterOperator::Prefix => actual.starts_with(expected),
            FilterOperator::Suffix => actual.ends_with(expected),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.attribute, self.operator, self.value)
    }
}

/// Whether a record passes every filter; `header` looks up a record header by name (first one).
pub fn accepts_all<'a>(filters: &[Filter], header: impl Fn(&str) -> Option<&'a [u8]>) -> bool {
    filters.iter().all(|filter| filter.accepts(header(filter.header())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a [u8]> + 'a {
        move |name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_bytes())
    }

    #[test]
    fn parses_attribute_operator_and_value() {
        let filter = Filter::parse("type=prefix:orders.").expect("valid");
        assert_eq!(filter.header(), "ce_type");
        assert_eq!(filter.operator, FilterOperator::Prefix);
        assert_eq!(filter.value, "orders.");
        assert_eq!(filter.to_string(), "type=prefix:orders.");
        // The operator is case-insensitive (the Subscription spells it Exact); values keep ':' and '='.
        let filter = Filter::parse("source=Exact:urn:shop:a=b").expect("valid");
        assert_eq!((filter.operator, filter.value.as_str()), (FilterOperator::Exact, "urn:shop:a=b"));
        assert_eq!(Filter::parse("datacontenttype=exact:application/json").expect("valid").header(), "content-type");
    }

    #[test]
    fn rejects_malformed_filters_naming_the_problem() {
        assert_eq!(Filter::parse("type"), Err(FilterError::Malformed("type".into())));
        assert_eq!(Filter::parse("type=orders"), Err(FilterError::Malformed("type=orders".into())));
        assert!(matches!(Filter::parse("Type=exact:x"), Err(FilterError::Attribute { .. })));
        assert!(matches!(Filter::parse("=exact:x"), Err(FilterError::Attribute { .. })));
        assert!(matches!(Filter::parse("averyveryverylongattribute=exact:x"), Err(FilterError::Attribute { .. })));
        assert!(matches!(Filter::parse("type=contains:x"), Err(FilterError::Operator { .. })));
        assert_eq!(Filter::parse("type=exact:"), Err(FilterError::EmptyValue("type=exact:".into())));
    }

    #[test]
    fn operators_compare_the_attribute() {
        let exact = Filter::parse("type=exact:orders.created").expect("valid");
        let prefix = Filter::parse("type=prefix:orders.").expect("valid");
        let suffix = Filter::parse("type=suffix:.created").expect("valid");
        assert!(exact.accepts(Some(b"orders.created")));
        assert!(!exact.accepts(Some(b"orders.created.v2")));
        assert!(prefix.accepts(Some(b"orders.created")) && !prefix.accepts(Some(b"payments.created")));
        assert!(suffix.accepts(Some(b"orders.created")) && !suffix.accepts(Some(b"orders.cancelled")));
        assert!(!exact.accepts(None) && !prefix.accepts(None) && !suffix.accepts(None));
    }

    #[test]
    fn every_filter_must_match_and_no_filter_accepts_all() {
        let filters = [Filter::parse("type=prefix:orders.").expect("valid"), Filter::parse("subject=suffix:-eu").expect("valid")];
        assert!(accepts_all(&filters, headers(&[("ce_type", "orders.created"), ("ce_subject", "o-1-eu")])));
        assert!(!accepts_all(&filters, headers(&[("ce_type", "orders.created"), ("ce_subject", "o-1-us")])));
        assert!(!accepts_all(&filters, headers(&[("ce_type", "orders.created")])));
        assert!(accepts_all(&[], headers(&[])));
    }
}
