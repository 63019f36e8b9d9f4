//! Sets of pod ordinals kept as ranges, so that `spec.replicas: 2147483647` costs two numbers, not two
//! billion: what a StatefulSet wants and what it is refused are both described this way.

use std::fmt;
use std::ops::RangeInclusive;

/// Ordinals as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ordinals(Vec<RangeInclusive<u32>>);

impl Ordinals {
    pub fn new() -> Self {
        Self::default()
    }

    /// `0..count` (empty when `count` is 0).
    pub fn first(count: u32) -> Self {
        let mut set = Self::new();
        if count > 0 {
            set.insert_range(0..=count - 1);
        }
        set
    }

    /// `start..start + count`, cut at `u32::MAX` (empty when `count` is 0): the ordinals of a StatefulSet
    /// whose `spec.ordinals.start` is `start`.
    pub fn counted(start: u32, count: u32) -> Self {
        let mut set = Self::new();
        if count > 0 {
            set.insert_range(start..=start.saturating_add(count - 1));
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many ordinals (as u64: up to 2^32).
    pub fn len(&self) -> u64 {
        self.0
            .iter()
            .map(|range| u64::from(*range.end()) - u64::from(*range.start()) + 1)
            .sum()
    }

    pub fn contains(&self, ordinal: u32) -> bool {
        self.0.iter().any(|range| range.contains(&ordinal))
    }

    pub fn insert(&mut self, ordinal: u32) {
        self.insert_range(ordinal..=ordinal);
    }

    pub fn insert_range(&mut self, range: RangeInclusive<u32>) {
        if range.is_empty() {
            return;
        }
        let (mut start, mut end) = (*range.start(), *range.end());
        let mut kept = Vec::with_capacity(self.0.len() + 1);
        for existing in self.0.drain(..) {
            // Overlapping or adjacent ranges merge.
            let touches = u64::from(*existing.start()) <= u64::from(end) + 1
                && u64::from(start) <= u64::from(*existing.end()) + 1;
            if touches {
                start = start.min(*existing.start());
                end = end.max(*existing.end());
            } else {
                kept.push(existing);
            }
        }
        kept.push(start..=end);
        kept.sort_by_key(|range| *range.start());
        self.0 = kept;
    }

    /// The ordinals of this set that also lie in `range`.
    pub fn within(&self, range: RangeInclusive<u32>) -> Self {
        let mut set = Self::new();
        for own in &self.0 {
            let start = (*own.start()).max(*range.start());
            let end = (*own.end()).min(*range.end());
            if start <= end {
                set.insert_range(start..=end);
            }
        }
        set
    }

    /// The ordinals of this set outside `range`.
    pub fn outside(&self, range: RangeInclusive<u32>) -> Self {
        let mut set = Self::new();
        for own in &self.0 {
            if *range.start() > *own.start() {
                set.insert_range(*own.start()..=(*own.end()).min(range.start().saturating_sub(1)));
            }
            if *range.end() < *own.end() {
                set.insert_range((*own.start()).max(range.end().saturating_add(1))..=*own.end());
            }
        }
        set
    }

    /// Every ordinal in order. Only for sets known to be small (bounded by the node-port range).
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().flat_map(|range| range.clone())
    }

    pub fn ranges(&self) -> &[RangeInclusive<u32>] {
        &self.0
    }
}

impl FromIterator<u32> for Ordinals {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut set = Self::new();
        for ordinal in iter {
            set.insert(ordinal);
        }
        set
    }
}

/// `0–2, 5, 2468–2147483646`.
impl fmt::Display for Ordinals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, range) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            if range.start() == range.end() {
                write!(f, "{}", range.start())?;
            } else {
                write!(f, "{}–{}", range.start(), range.end())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_print_compactly() {
        let mut set: Ordinals = [5, 1, 2, 0, 9].into_iter().collect();
        assert_eq!(set.to_string(), "0–2, 5, 9");
        set.insert_range(3..=4);
        assert_eq!(set.to_string(), "0–5, 9");
        set.insert_range(6..=8);
        assert_eq!(set.ranges(), &[0..=9]);
        assert_eq!(set.len(), 10);
    }

    #[test]
    fn the_largest_statefulset_costs_one_range() {
        let set = Ordinals::first(i32::MAX as u32);
        assert_eq!(set.ranges().len(), 1);
        assert_eq!(set.len(), i32::MAX as u64);
        assert!(set.contains(2_147_483_646) && !set.contains(2_147_483_647));
        let inside = set.within(0..=2767);
        assert_eq!(inside.len(), 2768);
        assert_eq!(set.outside(0..=2767).to_string(), "2768–2147483646");
        assert!(Ordinals::first(0).is_empty());
    }

    #[test]
    fn within_and_outside_split_a_set() {
        let set: Ordinals = [0, 1, 2, 10, 11, 50].into_iter().collect();
        assert_eq!(set.within(1..=10).to_string(), "1–2, 10");
        assert_eq!(set.outside(1..=10).to_string(), "0, 11, 50");
        assert_eq!(set.outside(0..=u32::MAX), Ordinals::new());
        assert_eq!(set.within(100..=200), Ordinals::new());
    }
}
