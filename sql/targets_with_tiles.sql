-- purpose: Each targets sample joined to its patient's slide and tile counts (who can be trained on).
-- grain: one row per sample of targets set $name and tiling (tiling null: the patient has no tiles)
-- params: $name varchar: the targets set (file stem under targets/)
-- columns: sample_id, patient_id, n_genes, n_missing_values, tiling, n_slides, n_tiles
with samples as (
    select
        t.sample_id,
        t.patient_id,
        count(distinct t.gene) as n_genes,
        count(*) filter (where t.value is null or isnan(t.value)) as n_missing_values
    from targets as t
    where t.name = $name
    group by t.sample_id, t.patient_id
),

patient_tiles as (
    select
        s.patient_id,
        ti.tiling,
        count(distinct ti.slide_id) as n_slides,
        count(*) as n_tiles
    from tiles as ti
    inner join slides as s on s.slide_id = ti.slide_id
    group by s.patient_id, ti.tiling
)

select
    sa.sample_id,
    sa.patient_id,
    sa.n_genes,
    sa.n_missing_values,
    pt.tiling,
    coalesce(pt.n_slides, 0) as n_slides,
    coalesce(pt.n_tiles, 0) as n_tiles
from samples as sa
left join patient_tiles as pt on pt.patient_id = sa.patient_id
order by sa.sample_id, pt.tiling;
