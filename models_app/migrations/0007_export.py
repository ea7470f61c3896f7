# ModelExport becomes Export: one row per download a worker builds, of any kind and subject.
# The existing rows are merged-model exports (the field's default).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('datasets', '0004_preference_format'),
        ('jobs', '0008_finetunejob_method_type'),
        ('models_app', '0006_usage_kind'),
    ]

    operations = [
        migrations.RenameModel('ModelExport', 'Export'),
        migrations.AddField(
            model_name='export',
            name='checkpoint',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='exports', to='jobs.checkpoint'),
        ),
        migrations.AddField(
            model_name='export',
            name='file',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='exports', to='datasets.file'),
        ),
        migrations.AddField(
            model_name='export',
            name='kind',
            field=models.CharField(choices=[('merged', 'Merged'), ('model_files', 'Model Files'), ('checkpoint', 'Checkpoint'), ('csv', 'Csv')], default='merged', max_length=12),
        ),
        migrations.AlterField(
            model_name='export',
            name='model',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='exports', to='models_app.finetunedmodel'),
        ),
        migrations.AddConstraint(
            model_name='export',
            constraint=models.UniqueConstraint(condition=models.Q(('model__isnull', False)), fields=('kind', 'model'), name='one_model_export'),
        ),
        migrations.AddConstraint(
            model_name='export',
            constraint=models.UniqueConstraint(condition=models.Q(('checkpoint__isnull', False)), fields=('kind', 'checkpoint'), name='one_checkpoint_export'),
        ),
        migrations.AddConstraint(
            model_name='export',
            constraint=models.UniqueConstraint(condition=models.Q(('file__isnull', False)), fields=('kind', 'file'), name='one_file_export'),
        ),
        migrations.AddConstraint(
            model_name='export',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('checkpoint', None), ('file', None), ('model__isnull', False)), models.Q(('checkpoint__isnull', False), ('file', None), ('model', None)), models.Q(('checkpoint', None), ('file__isnull', False), ('model', None)), _connector='OR'), name='export_has_one_subject'),
        ),
    ]
