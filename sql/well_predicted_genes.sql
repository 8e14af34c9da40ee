-- purpose: Against a run: the genes one model predicts well (r > 0, BH-FDR < 0.05, RMSE below the mean predictor).
-- grain: one row per well-predicted gene of model $model, best Pearson r first
-- params: $model varchar: the model name in the run (e.g. mil, lgbm)
-- columns: gene, n, pearson_r, pearson_p, fdr, spearman_rho, r2, rmse, rmse_baseline
with pooled as (
    select m.gene, m.n, m.pearson_r, m.pearson_p, m.fdr, m.spearman_rho, m.r2, m.rmse, m.rmse_baseline
    from metrics as m
    where m.fold = -1 and m.model = $model and m.well_predicted
)

select p.gene, p.n, p.pearson_r, p.pearson_p, p.fdr, p.spearman_rho, p.r2, p.rmse, p.rmse_baseline
from pooled as p
order by p.pearson_r desc, p.gene;
