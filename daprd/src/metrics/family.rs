//! A labelled family of metrics whose children are found by their label values compared as a
//! list.
//!
//! prometheus's `MetricVec` finds a child by one FNV-1a hash of the values written one after
//! the other with nothing between them (prometheus 0.14, `src/vec.rs`, `hash_label_values`), so
//! `["a", "12"]` and `["a1", "2"]` are the same child: `invocation_res_recv` of peer `a` with
//! gRPC status 12 and of peer `a1` with status 2 would be counted together, under the labels of
//! whichever came first. A family here keeps each label set with its child and compares the
//! values themselves; prometheus still makes the children, records into them and encodes them
//! (docs/dependencies.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc, Describer, Metric};
use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts};

/// How many label sets a family keeps in a list, compared value by value, before the rest go to
/// a map: a sidecar records the same few (its peers, its verbs, status 200) nearly every time,
/// and comparing a few short values is cheaper than hashing them (bench/notes.md, "metrics
/// recorded without hashing their labels").
pub(super) const AT_HAND: usize = 8;

/// A metric a family can hold for each label set.
pub(super) trait Child: Metric + Clone + Send + Sync + 'static {
    /// The family's name, help, constant labels (and buckets).
    type Opts: Clone + Describer + Send + Sync + 'static;
    const TYPE: MetricType;

    /// `opts` with one more constant label.
    fn label(opts: Self::Opts, name: &str, value: &str) -> Self::Opts;
    /// `opts` with the family's label names, to describe the family.
    fn with_label_names(opts: Self::Opts, names: Vec<String>) -> Self::Opts;
    fn new(opts: Self::Opts) -> prometheus::Result<Self>;
}

/// `Child` for a metric made from its options (`with_opts`), which take labels alike.
macro_rules! child {
    ($metric:ty, $opts:ty, $type:expr) => {
        impl Child for $metric {
            type Opts = $opts;
            const TYPE: MetricType = $type;

            fn label(opts: $opts, name: &str, value: &str) -> $opts {
                opts.const_label(name, value)
            }
            fn with_label_names(opts: $opts, names: Vec<String>) -> $opts {
                opts.variable_labels(names)
            }
            fn new(opts: $opts) -> prometheus::Result<Self> {
                <$metric>::with_opts(opts)
            }
        }
    };
}

child!(IntCounter, Opts, MetricType::COUNTER);
child!(IntGauge, Opts, MetricType::GAUGE);
child!(Histogram, HistogramOpts, MetricType::HISTOGRAM);

/// A family: registered once with the registry (a clone shares the children), recorded into
/// through [`Labelled::with`].
pub(super) struct Labelled<M: Child>(Arc<Family<M>>);

impl<M: Child> Clone for Labelled<M> {
    fn clone(&self) -> Self {
        Labelled(Arc::clone(&self.0))
    }
}

struct Family<M: Child> {
    desc: Desc,
    opts: M::Opts,
    label_names: Box<[String]>,
    /// A mutex, not a read-write lock: held for a lookup of a few compares, where taking a
    /// read lock cost more (bench/notes.md, "metrics' label sets told apart").
    children: Mutex<Children<M>>,
}

/// A label set, as it was recorded.
type LabelValues = Box<[Box<str>]>;

struct Children<M> {
    at_hand: Vec<(LabelValues, M)>,
    /// Past the first [`AT_HAND`] sets, by [`key`].
    rest: HashMap<String, M>,
}

impl<M> Children<M> {
    fn get(&self, values: &[&str]) -> Option<&M> {
        let same = |held: &[Box<str>]| held.iter().zip(values).all(|(h, v)| **h == **v);
        let at_hand = self.at_hand.iter().find(|(held, _)| same(held));
        match at_hand {
            Some((_, child)) => Some(child),
            None if self.rest.is_empty() => None,
            None => self.rest.get(&key(values)),
        }
    }

    fn insert(&mut self, values: &[&str], child: M) {
        if self.at_hand.len() < AT_HAND {
            self.at_hand
                .push((values.iter().map(|&v| Box::from(v)).collect(), child));
        } else {
            self.rest.insert(key(values), child);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &M> {
        self.at_hand
            .iter()
            .map(|(_, child)| child)
            .chain(self.rest.values())
    }
}

/// The values as one string that no other list of values gives: each value's length before it.
fn key(values: &[&str]) -> String {
    let mut key = String::with_capacity(values.iter().map(|v| v.len() + 4).sum());
    for value in values {
        key.push_str(itoa::Buffer::new().format(value.len()));
        key.push(':');
        key.push_str(value);
    }
    key
}

impl<M: Child> Labelled<M> {
    /// A family named and helped by `opts` (with its constant labels), labelled by `names`.
    pub(super) fn new(opts: M::Opts, names: &[&str]) -> prometheus::Result<Self> {
        let label_names: Box<[String]> = names.iter().map(|&n| n.to_owned()).collect();
        let desc = M::with_label_names(opts.clone(), label_names.to_vec()).describe()?;
        Ok(Labelled(Arc::new(Family {
            desc,
            opts,
            label_names,
            children: Mutex::new(Children {
                at_hand: Vec::new(),
                rest: HashMap::new(),
            }),
        })))
    }

    /// The child for `values`, made if the family has none yet; an error for a wrong count of
    /// values or a child prometheus cannot make.
    pub(super) fn child(&self, values: &[&str]) -> prometheus::Result<M> {
        self.with_child(values, M::clone)
    }

    /// Records into the child for `values` with `record`; a wrong count of values records
    /// nothing.
    pub(super) fn with(&self, values: &[&str], record: impl FnOnce(&M)) {
        // Nothing to record into is not the caller's failure: a call records what it can.
        let _ = self.with_child(values, record);
    }

    /// `use_child` on the child for `values`, under the lock, the child made and kept first if
    /// the family has none yet.
    fn with_child<T>(
        &self,
        values: &[&str],
        use_child: impl FnOnce(&M) -> T,
    ) -> prometheus::Result<T> {
        let family = &self.0;
        if values.len() != family.label_names.len() {
            return Err(prometheus::Error::InconsistentCardinality {
                expect: family.label_names.len(),
                got: values.len(),
            });
        }
        let mut children = family
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = children.get(values) {
            return Ok(use_child(child));
        }
        let opts = family
            .label_names
            .iter()
            .zip(values)
            .fold(family.opts.clone(), |opts, (name, value)| {
                M::label(opts, name, value)
            });
        let child = M::new(opts)?;
        let used = use_child(&child);
        children.insert(values, child);
        Ok(used)
    }
}

impl<M: Child> Collector for Labelled<M> {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    /// One family with a metric per label set, as `MetricVec` collects; the registry sorts
    /// them by their labels.
    fn collect(&self) -> Vec<MetricFamily> {
        let children = self
            .0
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut family = MetricFamily::default();
        family.set_name(self.0.desc.fq_name.clone());
        family.set_help(self.0.desc.help.clone());
        family.set_field_type(M::TYPE);
        family.set_metric(children.iter().map(Metric::metric).collect());
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{IntCounterVec, Registry, TextEncoder};

    use super::*;

    fn counters() -> Labelled<IntCounter> {
        let opts = Opts::new("calls", "calls").const_label("app_id", "checkout");
        Labelled::new(opts, &["peer", "status"]).expect("a family")
    }

    fn count(family: &Labelled<IntCounter>, values: &[&str]) -> u64 {
        family.child(values).expect("a child").get()
    }

    fn held(family: &Labelled<IntCounter>) -> (usize, usize) {
        let children = family.0.children.lock().expect("not poisoned");
        (children.at_hand.len(), children.rest.len())
    }

    fn text(collector: impl Collector + 'static) -> String {
        let registry = Registry::new();
        registry.register(Box::new(collector)).expect("registers");
        TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encodes")
    }

    #[test]
    fn records_reach_the_child_of_their_labels_however_many_label_sets_there_are() {
        let family = counters();
        // Twice the label sets kept at hand, each recorded a different number of times, in
        // turn, so that sets kept at hand and sets in the map alternate.
        let peers: Vec<String> = (0..2 * AT_HAND).map(|i| format!("app-{i}")).collect();
        for round in 0..2 * AT_HAND {
            for (i, peer) in peers.iter().enumerate() {
                if round <= i {
                    family.with(&[peer, "200"], |c| c.inc());
                }
            }
        }
        family.with(&["app-0", "500"], |c| c.inc());
        for (i, peer) in peers.iter().enumerate() {
            assert_eq!(count(&family, &[peer, "200"]), i as u64 + 1, "{peer}");
        }
        assert_eq!(count(&family, &["app-0", "500"]), 1);
        assert_eq!(count(&family, &["app-1", "500"]), 0);
        assert_eq!(held(&family), (AT_HAND, AT_HAND + 2));
    }

    #[test]
    fn a_record_with_the_wrong_count_of_labels_records_nothing() {
        let family = counters();
        family.with(&["app-0"], |c| c.inc());
        family.with(&["app-0", "200", "extra"], |c| c.inc());
        assert_eq!(held(&family), (0, 0));
        assert!(family.child(&["app-0"]).is_err());
        family.with(&["app-0", "200"], |c| c.inc());
        assert_eq!(count(&family, &["app-0", "200"]), 1);
    }

    #[test]
    fn label_sets_whose_values_run_together_alike_are_separate_children() {
        // prometheus's MetricVec takes both pairs for one child: the first recorded gets both
        // counts, and the second set is never exported.
        let vec =
            IntCounterVec::new(Opts::new("calls", "calls"), &["peer", "status"]).expect("a family");
        vec.with_label_values(&["a", "12"]).inc();
        vec.with_label_values(&["a1", "2"]).inc();
        assert_eq!(
            vec.with_label_values(&["a", "12"]).get(),
            2,
            "prometheus merges them"
        );

        let family = counters();
        // Both in the list kept at hand, then both in the map.
        for _ in 0..AT_HAND {
            family.with(&["a", "12"], |c| c.inc());
            family.with(&["a1", "2"], |c| c.inc());
            family.with(&["a1", "2"], |c| c.inc());
        }
        for i in 0..AT_HAND {
            family.with(&[&format!("filler-{i}"), "0"], |c| c.inc());
        }
        family.with(&["b", "12"], |c| c.inc());
        family.with(&["b1", "2"], |c| c.inc());
        family.with(&["b1", "2"], |c| c.inc());
        assert_eq!(count(&family, &["a", "12"]), AT_HAND as u64);
        assert_eq!(count(&family, &["a1", "2"]), 2 * AT_HAND as u64);
        assert_eq!(
            (count(&family, &["b", "12"]), count(&family, &["b1", "2"])),
            (1, 2)
        );
        let text = text(family);
        assert!(
            text.contains(r#"calls{app_id="checkout",peer="a",status="12"} 8"#),
            "{text}"
        );
        assert!(
            text.contains(r#"calls{app_id="checkout",peer="a1",status="2"} 16"#),
            "{text}"
        );
        assert!(
            text.contains(r#"calls{app_id="checkout",peer="b1",status="2"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn a_family_is_exported_as_prometheus_exports_a_metric_vec() {
        // Counters, gauges and histograms, empty values and the same sets recorded in another
        // order: the text is the same, line for line.
        let sets: [[&str; 2]; 4] = [["app-1", "200"], ["app-0", ""], ["app-1", "500"], ["", "0"]];
        let labels = ["peer", "status"];
        let opts = || Opts::new("calls", "help").const_label("app_id", "orders");
        let hopts = || {
            HistogramOpts::new("latency", "help")
                .const_label("app_id", "orders")
                .buckets(vec![1.0, 5.0])
        };
        let counters = Labelled::<IntCounter>::new(opts(), &labels).expect("a family");
        let gauges = Labelled::<IntGauge>::new(opts().namespace("g"), &labels).expect("a family");
        let histograms = Labelled::<Histogram>::new(hopts(), &labels).expect("a family");
        let counter_vec = IntCounterVec::new(opts(), &labels).expect("a vec");
        let gauge_vec =
            prometheus::IntGaugeVec::new(opts().namespace("g"), &labels).expect("a vec");
        let histogram_vec = prometheus::HistogramVec::new(hopts(), &labels).expect("a vec");
        for (i, set) in sets.iter().enumerate() {
            counters.with(set, |c| c.inc_by(i as u64 + 1));
            gauges.with(set, |g| g.set(-(i as i64)));
            histograms.with(set, |h| h.observe(i as f64 * 2.0));
        }
        for (i, set) in sets.iter().enumerate().rev() {
            counter_vec.with_label_values(set).inc_by(i as u64 + 1);
            gauge_vec.with_label_values(set).set(-(i as i64));
            histogram_vec.with_label_values(set).observe(i as f64 * 2.0);
        }
        assert_eq!(text(counters), text(counter_vec));
        assert_eq!(text(gauges), text(gauge_vec));
        assert_eq!(text(histograms), text(histogram_vec));
    }
}
