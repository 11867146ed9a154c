//! From what each host should have and what it has to what must change: per host its changes,
//! handlers and drift, and the order of change. Pure: facts in, a plan out, no host touched.
