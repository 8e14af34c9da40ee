-- purpose: Targets as a sample × gene matrix (stored, transformed values), one column per gene.
-- grain: one row per targets set (name) and sample
-- params: none (PIVOT over values found in the data cannot take parameters; filter on `name` afterwards)
-- columns: name, sample_id, patient_id, then one column per gene (value)
with long_targets as (
    select t.name, t.sample_id, t.patient_id, t.gene, t.value
    from targets as t
)

pivot long_targets
on gene
using first(value)
group by name, sample_id, patient_id
order by name, sample_id;
